"""The chat window against the real starter model: streaming, stop, history, idle relaunch, fixes;
and its transcript, built one message at a time, against one markdown document of the whole conversation."""
from __future__ import annotations

import sqlite3
import time

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTextBrowser

from desktop.chat import transcript as transcript_module
from desktop.chat.transcript import ChatMessage, Transcript, code_shade, message_markdown, shade_code_blocks

from desktop.chat_window import ChatWindow
from engines.chat.conversations import Store
from engines.chat.stop_reason import StopReason
from engines.units import DEFAULT_N_CTX
from engines.running.manager import EngineManager
from engines.running.supervisor import EngineStartError

pytestmark = pytest.mark.slow


@pytest.fixture
def window(qtbot, manager, store):
    w = ChatWindow(manager, store=store)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()


def db_rows(store: Store, conversation_id: int) -> list[tuple]:
    with sqlite3.connect(store.path) as db:  # a second connection: what a restarted app would read
        return db.execute("SELECT role, content, complete FROM messages WHERE conversation_id = ? ORDER BY id",
                          (conversation_id,)).fetchall()


def whole_conversation_html(messages: list[ChatMessage], like: QTextBrowser) -> str:
    """What the window showed before it rendered per message: one markdown document, code shaded."""
    view = QTextBrowser()
    view.resize(like.size())
    view.setMarkdown("\n---\n\n".join(message_markdown(m) for m in messages))
    shade_code_blocks(view.document(), code_shade(view.palette()))
    html = view.document().toHtml()
    view.deleteLater()
    return html


CODE_REPLY = ("Use a small function:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
              "Then call it:\n\n- `add(2, 3)` gives **5**\n- `add(1.5, 2)` gives **3.5**\n")


def mark_blocks(view: QTextBrowser, state: int) -> int:
    """Tag every block now in the view; a block rendered again loses its tag. Returns how many."""
    block, n = view.document().begin(), 0
    while block.isValid():
        block.setUserState(state)
        block, n = block.next(), n + 1
    return n


def tagged_blocks(view: QTextBrowser, state: int) -> int:
    block, n = view.document().begin(), 0
    while block.isValid():
        n += block.userState() == state
        block = block.next()
    return n


def test_transcript_per_message_equals_one_markdown_document(qtbot):
    """Appending, streaming into and dropping the last message give the document a whole render gives."""
    view = Transcript()
    qtbot.addWidget(view)
    view.resize(600, 400)
    view.show()
    history = [ChatMessage("user", "Hi *there*"), ChatMessage("assistant", CODE_REPLY, model="starter"),
               ChatMessage("user", "1. one\n2. two"),
               ChatMessage("assistant", "> a quote\n\n    indented code\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")]
    view.show_messages(history)
    assert view.document().toHtml() == whole_conversation_html(history, view)
    reply = ChatMessage("assistant", "", model="starter", streaming=True)
    view.append(reply)
    assert view.document().toHtml() == whole_conversation_html(history + [reply], view)
    assert "…" in view.toPlainText().splitlines()[-1]
    for piece in ("Sure", ": here it is\n\n```py\nx = 1", "\ny = 2\n```\n\nAnd a list:\n\n- a", "\n- b\n"):
        reply.content += piece
        view.refresh_last()
        assert view.document().toHtml() == whole_conversation_html(history + [reply], view)
        assert view.toPlainText().endswith("▍")
    reply.streaming = False
    view.refresh_last()
    assert view.document().toHtml() == whole_conversation_html(history + [reply], view)
    assert view.drop_last() is reply and view.messages == history
    assert view.document().toHtml() == whole_conversation_html(history, view)
    while view.messages:
        view.drop_last()
    assert view.toPlainText() == "Start a conversation: type a message below."
    view.append(history[0])
    assert view.document().toHtml() == whole_conversation_html(history[:1], view)


def test_a_finished_message_is_not_rendered_again_while_another_streams(qtbot, monkeypatch):
    view = Transcript()
    qtbot.addWidget(view)
    view.show()
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"Question {i}?" if i % 2 == 0 else CODE_REPLY)
               for i in range(9)]
    view.show_messages(history)
    tagged = mark_blocks(view, 7)
    rendered: list[str] = []

    def counting(m: ChatMessage) -> str:
        rendered.append(m.content)
        return message_markdown(m)

    monkeypatch.setattr(transcript_module, "message_markdown", counting)
    reply = ChatMessage("assistant", "", model="starter", streaming=True)
    view.append(reply)
    for word in ("The", " answer", " is", " **42**."):
        reply.content += word
        view.refresh_last()
    reply.streaming = False
    view.refresh_last()
    assert rendered == ["", "The", "The answer", "The answer is", "The answer is **42**.", "The answer is **42**."]
    assert tagged_blocks(view, 7) == tagged  # the earlier messages' blocks are the same blocks, untouched
    assert view.toPlainText().endswith("The answer is 42.")


def filled_conversation(store: Store, n: int):
    """A conversation of ``n`` short messages, every fifth reply a code block (about 2,300 tokens)."""
    conv = store.create("A long conversation", "starter")
    for i in range(n):
        if i % 2 == 0:
            store.add_message(conv.id, "user", f"What is {i} + {i}?")
        elif i % 10 == 9:
            store.add_message(conv.id, "assistant", f"```python\nprint({i - 1} + {i - 1})\n```", model="starter")
        else:
            store.add_message(conv.id, "assistant", f"It is **{2 * (i - 1)}**.", model="starter")
    return conv


def test_the_100th_message_streams_and_leaves_the_others_alone(qtbot, store, starter_spec, hw):
    from engines.running import launch
    m = EngineManager(idle_timeout=None)
    m.launch(launch.plan(starter_spec, hw, overrides={"n_ctx": DEFAULT_N_CTX}))  # the whole conversation is sent
    w = ChatWindow(m, store=store)
    qtbot.addWidget(w)
    w.show()
    try:
        conv = filled_conversation(store, 98)
        w.max_tokens = 40
        w.refresh_conversations()
        w.conversations.list.setCurrentRow(0)
        assert w.conversation.id == conv.id and len(w.history) == 98 and w.current_model_name() == "starter"
        tagged = mark_blocks(w.transcript, 7)
        seen: list[str] = []

        def progress():
            if len(w.history) == 100:
                seen.append(w.history[-1].content)
            return not w.streaming

        with qtbot.waitSignal(w.reply_ended, timeout=300_000) as ended:
            assert w.send("Tell me about the sea.")
            qtbot.waitUntil(progress, timeout=300_000)
        final = w.history[-1].content
        # the reply ends by itself, at the limit, or stopped by the guard when the starter loops: never by a failure
        assert len(w.history) == 100 and final
        assert ended.args[0].reason in (StopReason.FINISHED, StopReason.REPLY_LIMIT, StopReason.REPEATING)
        assert [s for s in seen if s and s != final], "the 100th message only appeared at the end; it should stream"
        assert tagged_blocks(w.transcript, 7) == tagged  # the 98 messages before were never rendered again
        mark_blocks(w.transcript, -1)  # untagged (the tags show in the HTML), it is what one whole render gives
        assert w.transcript.document().toHtml() == whole_conversation_html(w.history, w.transcript)
        rows = db_rows(store, conv.id)
        assert len(rows) == 100 and rows[-2:] == [("user", "Tell me about the sea.", 1), ("assistant", final, 1)]
    finally:
        w.shutdown()
        m.stop_all()


def test_reply_streams_into_the_window_and_is_saved(qtbot, window, store):
    window.max_tokens = 40
    # the model list is refreshed off the GUI thread (remotes answer over the network): wait for it
    qtbot.waitUntil(lambda: window.current_model_name() == "starter", timeout=10_000)
    seen: list[str] = []
    saved_partial = []

    def progress():
        if window.history and window.history[-1].role == "assistant":
            seen.append(window.history[-1].content)
            rows = db_rows(store, window.conversation.id)
            if rows and rows[-1][0] == "assistant" and rows[-1][2] == 0 and rows[-1][1]:
                saved_partial.append(rows[-1][1])
        return not window.streaming

    qtbot.keyClicks(window.composer.input, "Tell me about the sea.")
    with qtbot.waitSignal(window.reply_ended, timeout=120_000) as ended:
        qtbot.keyClick(window.composer.input, Qt.Key.Key_Return)  # Enter sends
        assert db_rows(store, window.conversation.id)[0][:2] == ("user", "Tell me about the sea.")  # saved first
        qtbot.waitUntil(progress, timeout=120_000)
    final = window.history[-1].content
    # ends by itself, at the limit, or stopped by the guard when the starter loops: not by the user, not failed
    assert final and ended.args[0].reason in (StopReason.FINISHED, StopReason.REPLY_LIMIT, StopReason.REPEATING)
    partials = [s for s in seen if s and s != final]
    assert partials, "the reply only appeared at the end; it should stream"
    assert all(final.startswith(p) for p in partials)
    assert " ".join(final.split()) in " ".join(window.transcript.toPlainText().split())  # markdown joins lines
    assert db_rows(store, window.conversation.id) == [("user", "Tell me about the sea.", 1), ("assistant", final, 1)]
    assert "tokens/s" in window.status.text() and "of 2,048 tokens" in window.status.text()
    listed = window.conversations.list
    assert listed.count() == 1 and listed.item(0).text() == "Tell me about the sea."


def test_stop_cancels_mid_stream_and_keeps_the_partial_reply(qtbot, window, store):
    window.max_tokens = 1500
    window.send("Write a very long story about a lighthouse keeper.")
    qtbot.waitUntil(lambda: window.streaming and len(window.history[-1].content) > 20, timeout=120_000)
    with qtbot.waitSignal(window.reply_finished, timeout=30_000) as finished:
        qtbot.keyClick(window, Qt.Key.Key_Escape)  # Esc stops
    fin = finished.args[0]
    assert fin.cancelled
    assert (fin.usage.completion_tokens or 0) < 1500
    kept = window.history[-1].content
    assert kept and db_rows(store, window.conversation.id)[-1] == ("assistant", kept, 0)
    assert "Stopped" in window.status.text()
    assert window.composer.send_button.isEnabled() and not window.composer.stop_button.isEnabled()


def test_markdown_code_block_renders_mid_conversation(qtbot, window, store, screenshot):
    conv = store.create("Adding numbers in Python", "starter")
    store.add_message(conv.id, "user", "How do I add two numbers in Python?")
    store.add_message(conv.id, "assistant", CODE_REPLY, model="starter")
    window.refresh_conversations()
    window.conversations.list.setCurrentRow(0)
    assert window.conversation.id == conv.id
    text = window.transcript.toPlainText()
    assert "def add(a, b):" in text and "```" not in text and "**" not in text
    window.max_tokens = 300
    window.send("And how do I multiply them?")
    qtbot.waitUntil(lambda: len(window.history[-1].content) > 40 or not window.streaming, timeout=120_000)
    screenshot(window, "chat-window")
    with qtbot.waitSignal(window.reply_finished, timeout=120_000):
        window.stop()
    assert [m.role for m in store.messages(conv.id)] == ["user", "assistant", "user", "assistant"]


def test_regenerate_replaces_the_last_reply(qtbot, window, store):
    window.max_tokens = 8
    with qtbot.waitSignal(window.reply_finished, timeout=120_000):
        window.send("Say hello.")
    with qtbot.waitSignal(window.reply_finished, timeout=120_000):
        qtbot.mouseClick(window.composer.regen_button, Qt.MouseButton.LeftButton)
    assert [r[0] for r in db_rows(store, window.conversation.id)] == ["user", "assistant"]
    window.copy_last_reply()
    from PySide6.QtGui import QGuiApplication
    assert QGuiApplication.clipboard().text() == window.history[-1].content


def test_conversations_rename_and_delete(qtbot, store):
    w = ChatWindow(EngineManager(idle_timeout=None), store=store)
    qtbot.addWidget(w)
    a = store.create("First")
    b = store.create("Second")
    store.add_message(a.id, "user", "hi")
    w.refresh_conversations()
    assert [w.conversations.list.item(i).text() for i in range(2)] == ["First", "Second"]  # most recent first
    w.open_conversation(b.id)
    w.conversations.rename(b.id, "Renamed")
    assert store.get(b.id).title == "Renamed"
    assert "Renamed" in [w.conversations.list.item(i).text() for i in range(w.conversations.list.count())]
    item = w.conversations.list.findItems("First", Qt.MatchFlag.MatchExactly)[0]
    item.setText("Edited in place")  # what the list's inline editor does
    assert store.get(a.id).title == "Edited in place"
    w.conversations.delete(b.id)
    assert w.conversation is None and store.get(b.id) is None
    assert [c.title for c in store.list()] == ["Edited in place"]
    with pytest.raises(ValueError):
        store.rename(a.id, "  ")


def test_no_model_offers_the_starter_in_one_click(qtbot, store, starter_path):
    m = EngineManager(idle_timeout=None)
    w = ChatWindow(m, store=store)
    qtbot.addWidget(w)
    w.show()
    try:
        w.dismiss_welcome()  # the welcome card (no chat model here) offers the starter too; this is the row
        assert w.engine.offer.isVisible() and w.engine.offer.button.text() == "Start the starter"
        assert "tiny offline demo" in w.engine.offer.label.text()
        with qtbot.waitSignal(w.busy_changed, timeout=5_000, check_params_cb=lambda busy: busy):
            qtbot.mouseClick(w.engine.offer.button, Qt.MouseButton.LeftButton)
        assert w.engine.busy.isVisible() and w.composer.stop_button.isEnabled()
        qtbot.waitUntil(lambda: not w.loading, timeout=120_000)
        qtbot.waitUntil(lambda: w.current_model_name() == "starter", timeout=10_000)
        assert not w.engine.offer.isVisible()
        assert m.get("starter").proc.running
    finally:
        m.stop_all()


def test_idle_unload_relaunches_on_the_next_message(qtbot, window, manager):
    window.max_tokens = 8
    manager.idle_timeout = 0.2
    try:
        time.sleep(0.3)
        assert manager.unload_idle() == ["starter"]
        qtbot.waitUntil(lambda: "unloaded" in window.engine.combo.currentText(), timeout=5_000)
        assert manager.get("starter") is None
        with qtbot.waitSignal(window.reply_finished, timeout=180_000):
            window.send("Hello again.")
            assert window.loading and "again" in window.engine.busy.label.text()
        assert manager.get("starter").proc.running
        assert window.history[-1].content
    finally:
        manager.idle_timeout = None


def test_apply_fix_relaunches_with_the_change_and_resends(qtbot, window, manager, store):
    window.max_tokens = 8
    with qtbot.waitSignal(window.reply_finished, timeout=120_000):
        window.send("Hi.")
    window.troubleshooter.failed_plan = manager.get("starter").plan
    with qtbot.waitSignal(window.reply_finished, timeout=180_000):
        window.apply_fix({"n_ctx": 1024})
    assert manager.get("starter").plan.params["n_ctx"] == 1024
    assert [r[0] for r in db_rows(store, window.conversation.id)] == ["user", "assistant"]  # resent, not doubled


def test_a_failure_shows_the_error_and_its_log(qtbot, window, tmp_path):
    log_path = tmp_path / "engine.log"
    log_path.write_text("gguf_init_from_reader: invalid magic characters: '_I??', expected 'GGUF'\n")
    exc = EngineStartError("The llamacpp engine exited with status 1 while starting.", None,
                           log_path.read_text().splitlines(), log_path)
    with qtbot.waitSignal(window.failure_shown, timeout=5_000) as shown:
        window.handle_failure(exc, "broken")
    dialog = shown.args[0]
    assert dialog.isVisible()
    from PySide6.QtWidgets import QMessageBox
    if isinstance(dialog, QMessageBox):  # before the diagnosis dialog exists
        assert "exited with status 1" in dialog.text() and str(log_path) in dialog.informativeText()
    dialog.close()


def test_a_remote_endpoint_is_listed_and_chats(qtbot, manager, tmp_path, monkeypatch):
    """A remote server (here: the starter's own OpenAI server, reached as a remote) in the picker."""
    remotes = pytest.importorskip("engines.chat.remotes")
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    run = manager.get("starter")
    monkeypatch.setenv("EMBER_TEST_REMOTE_KEY", run.proc.api_key)
    remotes.add("lab", run.proc.base_url, key_env="EMBER_TEST_REMOTE_KEY")
    w = ChatWindow(EngineManager(idle_timeout=None), store=Store(tmp_path / "chats.sqlite3"))
    qtbot.addWidget(w)
    w.show()  # lists remotes off the GUI thread
    qtbot.waitUntil(lambda: w.current_endpoint() is not None, timeout=30_000)
    ep = w.current_endpoint()
    assert ep.kind == "remote" and ep.name.startswith("lab/") and w.engine.combo.currentText().endswith("(remote)")
    assert not w.engine.offer.isVisible()
    w.max_tokens = 64  # template tokens are not shown: a few more than that, so some text is
    with qtbot.waitSignal(w.reply_ended, timeout=120_000) as ended:
        w.send("Hello over the network.")
    # the starter through a chat endpoint echoes and loops: the guard may stop it, the user did not
    assert ended.args[0].reason in (StopReason.FINISHED, StopReason.REPLY_LIMIT, StopReason.REPEATING)
    assert w.history[-1].content
    assert w.history[-1].model == ep.name


def long_reply_streaming(qtbot, w: ChatWindow) -> None:
    """Ask for a long story until a reply is streaming (a sampled reply may end, or loop and be
    stopped, early: then ask again in a new chat)."""
    w.max_tokens = 900
    for _ in range(5):
        w.send("Write a very long story about a lighthouse keeper.")
        started = time.monotonic()
        qtbot.waitUntil(lambda: not w.streaming or (len(w.history[-1].content) > 20
                                                    and time.monotonic() - started > 1.5), timeout=120_000)
        if w.streaming:
            return
        w.new_chat()
    assert w.streaming, w.status.text()


def test_engine_crash_mid_reply_keeps_the_partial_reply_and_explains(qtbot, store, starter_spec, hw):
    """kill -9 of the engine while it answers: the text so far is in SQLite, the failure is shown."""
    from engines.running import launch
    m = EngineManager(idle_timeout=None)
    m.launch(launch.plan(starter_spec, hw, overrides={"n_ctx": 1024}))
    w = ChatWindow(m, store=store)
    qtbot.addWidget(w)
    w.show()
    try:
        long_reply_streaming(qtbot, w)
        qtbot.waitUntil(lambda: (db_rows(store, w.conversation.id)[-1][1] or "") != "", timeout=5_000)
        row = db_rows(store, w.conversation.id)[-1]
        assert row[0] == "assistant" and row[2] == 0 and w.history[-1].content.startswith(row[1])  # saved while streaming
        with qtbot.waitSignal(w.failure_shown, timeout=60_000) as shown:
            m.get("starter").proc.kill()
        dialog = shown.args[0]
        assert dialog.isVisible()
        kept = w.history[-1].content
        assert kept and db_rows(store, w.conversation.id)[-1] == ("assistant", kept, 0)
        status = w.status.text()
        assert w.composer.send_button.isEnabled()
        # the status line speaks in sentences: the diagnosis title; the raw error only under Details
        assert status.startswith(dialog.diagnosis.title) and "kept" in status
        assert "peer closed" not in status and "incomplete" not in status and "HTTP" not in status
        dialog.close()
    finally:
        w.shutdown()
        m.stop_all()


def test_a_paused_engine_mid_reply_is_found_stopped_and_explained_in_seconds(qtbot, store, starter_spec, hw):
    """SIGSTOP of the engine while it answers (issue 12): the window does not wait in silence; the
    watchdog stops the engine through the manager, the partial reply is kept, the dialog says why."""
    import os
    import signal
    from engines.running import launch
    m = EngineManager(idle_timeout=None)
    m.launch(launch.plan(starter_spec, hw, overrides={"n_ctx": 1024}))
    w = ChatWindow(m, store=store)
    qtbot.addWidget(w)
    w.show()
    try:
        long_reply_streaming(qtbot, w)
        proc = m.get("starter").proc
        paused_at = time.monotonic()
        with qtbot.waitSignal(w.failure_shown, timeout=60_000) as shown:
            os.kill(proc.pid, signal.SIGSTOP)
        took = time.monotonic() - paused_at
        dialog = shown.args[0]
        assert dialog.diagnosis.kind == "engine_stalled" and "paused" in dialog.diagnosis.explanation
        assert took < 20, took
        assert w.history[-1].content and w.status.text().startswith("The engine stopped responding")
        qtbot.waitUntil(lambda: not proc.running and m.get("starter") is None, timeout=20_000)
        dialog.close()
    finally:
        w.shutdown()
        m.stop_all()
