"""Issue 11 in the chat window, against the real starter: replies that end (reply limit, loop guard,
the stop reason in the status line), a model without a chat template run as text completion, the
welcome card, the view following a streaming reply, failures in sentences, and a crashed engine
leaving the picker."""
from __future__ import annotations

import os
import signal
import sqlite3

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QVBoxLayout, QWidget

from desktop.chat.composer import COMPLETION_HINT
from desktop.chat.transcript import ChatMessage, Transcript
from desktop.chat_window import ChatWindow
from desktop.settings_dialog import SettingsDialog
from engines import settings
from engines.chat.completion_mode import COMPLETION_NOTE, Mode, ModeDecision
from engines.chat.conversations import Store
from engines.chat.stop_reason import SENTENCES, StopReason
from engines.models import store as model_store
from engines.running import launch
from engines.running.manager import EngineManager
from tests.fakehub.server import FakeHub

#: What a chat template or special token looks like in text (ChatML, Gemma, Llama 3, ...).
TEMPLATE_MARKS = ("<|", "|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "</s>", "[INST]")


@pytest.fixture
def window(qtbot, manager, store):
    w = ChatWindow(manager, store=store)
    qtbot.addWidget(w)
    w.resize(980, 680)
    w.show()
    qtbot.waitUntil(lambda: w.current_model_name() == "starter" and "starter" in w.engine.modes, timeout=30_000)
    yield w
    w.shutdown()


@pytest.fixture
def own_engine(qtbot, store, starter_spec):
    """own_engine(n_ctx): a chat window on its own manager, the starter running with that context
    (for tests that restart, overflow or kill the engine)."""
    made: list[ChatWindow] = []

    def make(n_ctx: int) -> ChatWindow:
        m = EngineManager(idle_timeout=None)
        m.launch(launch.plan(starter_spec, overrides={"n_ctx": n_ctx}))
        w = ChatWindow(m, store=store)
        made.append(w)
        qtbot.addWidget(w)
        w.resize(980, 680)
        w.show()
        qtbot.waitUntil(lambda: w.current_model_name() == "starter", timeout=30_000)
        return w
    yield make
    for w in made:
        w.shutdown()
        w.manager.stop_all()


@pytest.fixture
def reply_limit():
    """Set the reply_limit setting for one test (the app's own setting, as the Settings dialog saves it)."""
    def set_to(tokens: int) -> int:
        settings.update({"reply_limit": tokens})
        return tokens
    yield set_to
    settings.update({"reply_limit": settings.DEFAULTS["reply_limit"]})


def saved_replies(store: Store, conversation_id: int) -> list[tuple[str, int]]:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT content, complete FROM messages WHERE conversation_id = ? AND role = 'assistant' "
                          "ORDER BY id", (conversation_id,)).fetchall()


def no_template_marks(text: str) -> bool:
    return not any(mark in text for mark in TEMPLATE_MARKS)


# -- replies that end -----------------------------------------------------------------------------

@pytest.mark.slow
def test_the_starters_reply_continues_the_text_ends_within_the_limit_and_says_why(qtbot, window, store,
                                                                                  reply_limit):
    """The issue's first chat: the starter (no chat template) in the chat window, with the default flow."""
    limit = reply_limit(40)
    assert window.engine.modes["starter"].mode is Mode.COMPLETION
    assert COMPLETION_NOTE in window.engine.combo.currentText()          # the picker says so
    assert window.engine.note.isVisible() and "tiny offline demo" in window.engine.note.label.text()
    with qtbot.waitSignal(window.reply_ended, timeout=300_000) as ended:
        window.send("What is the capital of France?")
        status_while_streaming = window.status.text()
    end = ended.args[0]
    for _ in range(3):  # the reply is sampled: a blank one is named (CI saw "\n\n"), then Regenerate asks again
        if end.reason is not StopReason.EMPTY:
            break
        assert window.status.text().startswith(SENTENCES[StopReason.EMPTY]) and not window.history[-1].content.strip()
        with qtbot.waitSignal(window.reply_ended, timeout=300_000) as ended:
            window.composer.regen_button.click()
        end = ended.args[0]
    assert window.reply.completion                                       # sent as text to continue
    assert "continuing your text" in status_while_streaming and f"reply limit {limit} tokens" in status_while_streaming
    assert end.reason in (StopReason.FINISHED, StopReason.REPLY_LIMIT, StopReason.REPEATING)
    assert (end.finished.usage.completion_tokens or 0) <= limit
    assert window.status.text().startswith(end.sentence())               # the status line names the reason
    assert end.sentence().split(":")[0] in {s.split(":")[0] for s in SENTENCES.values()}
    reply = window.history[-1].content
    assert reply.strip() and no_template_marks(reply)
    assert no_template_marks(window.transcript.toPlainText())
    assert all(no_template_marks(text) for text, _ in saved_replies(store, window.conversation.id))


@pytest.mark.slow
def test_template_tokens_are_never_shown_nor_saved(qtbot, window, store):
    """The same model sent through llama.cpp's chat path (ChatML fallback) writes <|im_start|>/<|im_end|>
    as text: the window shows and saves the reply without them."""
    window.engine.modes["starter"] = ModeDecision(Mode.CHAT, "forced for this test: the ChatML fallback")
    window.max_tokens = 48
    with qtbot.waitSignal(window.reply_ended, timeout=300_000):
        window.send("What is the capital of France?")
    assert not window.reply.completion
    assert not no_template_marks(window.reply.raw_text)                # the engine did write them
    reply = window.history[-1].content
    assert no_template_marks(reply) and no_template_marks(window.transcript.toPlainText())
    assert all(no_template_marks(text) for text, _ in saved_replies(store, window.conversation.id))


@pytest.mark.slow
def test_a_looping_reply_is_stopped_and_the_status_says_it_was_repeating(qtbot, window, store, screenshot):
    window.max_tokens = 400
    for _ in range(3):  # the reply is sampled: one may wander off instead of looping; ask again in a new chat
        with qtbot.waitSignal(window.reply_ended, timeout=300_000) as ended:
            window.send("The cat sat on the mat. The cat sat on the mat. The cat sat on the mat.")
        end = ended.args[0]
        if end.reason is StopReason.REPEATING:
            break
        window.new_chat()
    assert end.reason is StopReason.REPEATING and end.repetition is not None, end.reason
    assert window.status.text().startswith("Stopped: the model was repeating itself")
    assert window.status.toolTip() == end.repetition.describe()          # what looped, on hover
    assert not window.streaming and window.composer.send_button.isEnabled()
    assert end.repetition.copies >= 3 and window.history[-1].content     # the reply so far is kept
    assert saved_replies(store, window.conversation.id)[-1] == (window.history[-1].content, 1)
    assert not window.troubleshooter.banner.isVisible()                  # stopped by Ember: nothing to fix
    screenshot(window, "chat_stopped_repeating")


@pytest.mark.slow
def test_stop_by_you_is_named(qtbot, window):
    window.max_tokens = 600
    window.send("Once upon a time, in a small village by the sea,")
    qtbot.waitUntil(lambda: window.streaming and len(window.history[-1].content) > 10, timeout=300_000)
    with qtbot.waitSignal(window.reply_ended, timeout=30_000) as ended:
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert ended.args[0].reason is StopReason.STOPPED_BY_YOU
    assert window.status.text().startswith("Stopped by you")


def test_the_settings_dialog_edits_the_reply_limit(qtbot, reply_limit, store):
    reply_limit(300)
    dialog = SettingsDialog()
    qtbot.addWidget(dialog)
    assert dialog.reply_limit.value() == 300
    dialog.reply_limit.setValue(512)
    dialog.accept()
    assert settings.get("reply_limit") == 512
    w = ChatWindow(EngineManager(idle_timeout=None), store=store)
    qtbot.addWidget(w)
    assert w.reply_limit() == 512                                        # what the next reply is limited to
    w.shutdown()


# -- the welcome card ------------------------------------------------------------------------------

@pytest.fixture
def bare_window(qtbot, store, fresh_home):
    """A chat window on a computer with only the starter, no engine running."""
    def make() -> ChatWindow:
        w = ChatWindow(EngineManager(idle_timeout=None), store=store)
        qtbot.addWidget(w)
        w.resize(980, 680)
        w.show()
        qtbot.waitUntil(lambda: w.first_run is not None, timeout=30_000)
        return w
    return make


@pytest.fixture
def online_hub(monkeypatch):
    hub = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    yield hub
    hub.stop()


def test_the_first_chat_opens_on_the_welcome_card(qtbot, bare_window, online_hub, screenshot):
    w = bare_window()
    assert w.welcome_shown and w.welcome.card.isVisible() and not w.transcript.isVisible()
    assert w.first_run.offline is None and w.welcome.card.lead.isVisible() and not w.welcome.card.offline.isVisible()
    assert "tiny offline demo" in w.welcome.card.about.text() and "continues your text" in w.welcome.card.about.text()
    assert not w.engine.offer.isVisible()                    # the card offers the starter itself
    screenshot(w, "chat_welcome")
    with qtbot.waitSignal(w.models_requested, timeout=2_000):
        qtbot.mouseClick(w.welcome.card.choose_button, Qt.MouseButton.LeftButton)
    w.new_chat()
    assert w.welcome_shown                                   # a new chat still leads to a chat model


@pytest.mark.slow
def test_the_starter_is_one_click_away_from_the_welcome_card(qtbot, bare_window, online_hub):
    w = bare_window()
    try:
        with qtbot.waitSignal(w.busy_changed, timeout=5_000, check_params_cb=lambda busy: busy):
            qtbot.mouseClick(w.welcome.card.starter_button, Qt.MouseButton.LeftButton)
        assert not w.welcome_shown and w.transcript.isVisible()
        qtbot.waitUntil(lambda: not w.loading and w.current_model_name() == "starter", timeout=300_000)
        assert w.manager.get("starter").proc.running
        qtbot.waitUntil(lambda: w.engine.note.isVisible(), timeout=30_000)   # the starter continues text
        assert w.composer.input.placeholderText() == COMPLETION_HINT
        w.new_chat()
        assert not w.welcome_shown                           # dismissed for the session
    finally:
        w.manager.stop_all()


@pytest.mark.parametrize("how", ["setting", "unreachable"])
def test_offline_the_card_says_so_plainly(qtbot, bare_window, monkeypatch, how):
    if how == "setting":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
    w = bare_window()
    assert w.welcome_shown and w.welcome.card.offline.isVisible() and not w.welcome.card.lead.isVisible()
    text = w.welcome.card.offline.text()
    assert "offline" in text and "starter works without a network" in text
    assert ("HF_HUB_OFFLINE" in text) == (how == "setting") and ("127.0.0.1" in text) == (how == "unreachable")
    assert w.welcome.card.starter_button.isVisible()


def test_with_a_chat_model_on_disk_there_is_no_welcome_card(qtbot, bare_window, tmp_path, online_hub):
    folder = tmp_path / "tiny-chat"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 2}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    model_store.add_local(folder, "tiny-chat")
    w = bare_window()
    assert w.first_run.has_chat_model and not w.welcome_shown and w.transcript.isVisible()


def test_a_saved_reply_is_shown_without_template_tokens(qtbot, store):
    conv = store.create("An old chat", "starter")
    store.add_message(conv.id, "user", "What is the capital of France?")
    store.add_message(conv.id, "assistant", "Paris. <|im_end|>\n<|im_start|>user\nWhat is", model="starter")
    w = ChatWindow(EngineManager(idle_timeout=None), store=store)
    qtbot.addWidget(w)
    w.open_conversation(conv.id)
    assert "Paris." in w.transcript.toPlainText() and no_template_marks(w.transcript.toPlainText())
    w.shutdown()


# -- following a streaming reply -------------------------------------------------------------------

def long_history(n: int = 60) -> list[ChatMessage]:
    return [ChatMessage("user" if i % 2 == 0 else "assistant", f"Message {i}: " + "words " * 40) for i in range(n)]


def stream_into(view: Transcript, qtbot, pieces: int):
    """A reply streaming into the view, a line at a time; yields after each piece is shown."""
    reply = ChatMessage("assistant", "", model="starter", streaming=True)
    view.append(reply)
    for i in range(pieces):
        reply.content += f"line {i} of the reply\n\n"
        view.refresh_last()
        qtbot.wait(5)
        yield reply


def test_the_view_follows_a_reply_while_a_row_above_it_takes_room(qtbot):
    """An engine restart (a one-click fix) shows the busy row above the transcript: the view shrinks,
    and the retried reply used to stream out of view."""
    host = QWidget()
    layout = QVBoxLayout(host)
    row = QWidget()
    row.setFixedHeight(120)
    row.hide()
    view = Transcript()
    layout.addWidget(row)
    layout.addWidget(view, 1)
    qtbot.addWidget(host)
    host.resize(600, 500)
    host.show()
    view.show_messages(long_history())
    bar = view.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0 and bar.value() == bar.maximum(), timeout=5_000)
    row.show()                                     # the busy row appears: the view loses 120 pixels
    for i, _ in enumerate(stream_into(view, qtbot, 30)):
        assert bar.value() == bar.maximum(), f"the reply streamed out of view after {i + 1} pieces"
    row.hide()
    qtbot.wait(20)
    assert bar.value() == bar.maximum()


def test_a_reader_who_scrolled_up_stays_where_they_are(qtbot):
    view = Transcript()
    qtbot.addWidget(view)
    view.resize(600, 400)
    view.show()
    view.show_messages(long_history())
    bar = view.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0, timeout=5_000)
    spot = bar.maximum() // 3
    bar.setValue(spot)                             # the reader scrolls up
    for _ in stream_into(view, qtbot, 10):
        pass
    assert bar.value() == spot and bar.maximum() > spot * 3
    assert not view.following
    view.follow()                                  # they send the next message: back to the end
    assert bar.value() == bar.maximum() and view.following


@pytest.mark.slow
def test_the_retried_reply_after_a_fix_streams_in_view(qtbot, store, own_engine):
    """The issue's path: a long conversation, a one-click fix restarts the engine, the reply is resent."""
    w = own_engine(2048)
    conv = store.create("A long chat", "starter")
    for msg in long_history(30):
        store.add_message(conv.id, msg.role, msg.content, model="starter")
    store.add_message(conv.id, "user", "And the sea?")
    w.open_conversation(conv.id)
    w.max_tokens = 24
    bar = w.transcript.verticalScrollBar()
    off_bottom: list[int] = []
    w.troubleshooter.failed_plan = w.manager.get("starter").plan
    with qtbot.waitSignal(w.reply_ended, timeout=600_000):
        w.apply_fix({"n_ctx": 4096})
        qtbot.waitUntil(lambda: w.loading, timeout=5_000)
        assert w.engine.busy.isVisible()
        while not w.streaming:
            qtbot.wait(50)
        while w.streaming:
            if bar.value() != bar.maximum():
                off_bottom.append(bar.maximum() - bar.value())
            qtbot.wait(20)
    assert w.manager.get("starter").plan.params["n_ctx"] == 4096
    assert not off_bottom, f"the retried reply was out of view by up to {max(off_bottom)} pixels"
    assert bar.value() == bar.maximum()


# -- failures in sentences, and a crash in the picker ----------------------------------------------

@pytest.mark.slow
def test_a_conversation_longer_than_the_context_is_said_in_a_sentence(qtbot, own_engine):
    w = own_engine(256)
    with qtbot.waitSignal(w.failure_shown, timeout=120_000) as shown:
        w.send("Tell me about the sea. " * 80)  # about 480 tokens in a 256-token context
    dialog = shown.args[0]
    status = w.status.text()
    assert status.startswith(dialog.diagnosis.title)
    assert "HTTP" not in status and "exceeds" not in status and "tokens)" not in status
    dialog.close()


@pytest.mark.slow
def test_the_picker_stops_saying_ready_when_the_engine_is_killed(qtbot, own_engine):
    w = own_engine(1024)
    run = w.manager.get("starter")
    w.status.setText("starter is ready")
    os.kill(run.proc.pid, signal.SIGKILL)
    # the manager's watcher notices the exit and tells its listeners: the window says so within 2 s
    qtbot.waitUntil(lambda: "stopped unexpectedly" in w.status.text(), timeout=2_000)
    label = w.engine.combo.currentText()
    assert label == "" or "(stopped)" in label, label     # gone from the list, or marked stopped
    assert w.engine.offer.isVisible() or "(stopped)" in label
