"""The guided error dialog over a real engine failure, driven through the chat window: a
too-long message with a small context, the dialog's numbers, and a click on the fix
that relaunches the engine (``ChatWindow.apply_fix``: the manager, off the GUI
thread) and completes the same chat."""
from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QWidget

from engines.running import launch
from engines.running.manager import EngineManager

LONG = "The quick brown fox jumps over the lazy dog. " * 100  # about 1,000 tokens



@pytest.fixture
def small_manager(starter_spec, hw):
    """The starter with a 512-token context: too small for LONG."""
    m = EngineManager(idle_timeout=None)
    m.launch(launch.plan(starter_spec, hw, overrides={"n_ctx": 512}))
    yield m
    m.stop_all()


@pytest.fixture
def window(qtbot, small_manager, tmp_path):
    from desktop.chat_window import ChatWindow
    from engines.chat.conversations import Store
    store = Store(tmp_path / "chats.sqlite3")
    w = ChatWindow(small_manager, store=store)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()
    store.close()


@pytest.mark.slow
def test_context_error_dialog_fix_relaunches_and_completes(qtbot, window, small_manager, screenshot):
    from desktop.diagnosis_dialog import DiagnosisDialog

    window.max_tokens = 8
    assert window.select_model("starter")
    with qtbot.waitSignal(window.failure_shown, timeout=120_000) as shown:
        window.send(LONG)
    dlg = shown.args[0]
    assert isinstance(dlg, DiagnosisDialog)
    qtbot.waitExposed(dlg)
    d = dlg.diagnosis
    n_prompt = d.facts["n_prompt_tokens"]
    assert n_prompt > 512
    # words first, the numbers in them and below them
    assert dlg.title_label.text() == "The conversation is longer than the engine's context"
    assert f"Your message needs {n_prompt:,} tokens; each slot holds 512 (n_ctx 512 / n_parallel 1)." \
        in dlg.explanation_label.text()
    assert f"Message\u00a0tokens:\u00a0{n_prompt:,}" in dlg.facts_label.text()
    assert "Context:\u00a0512" in dlg.facts_label.text() and "n_ctx" not in dlg.facts_label.text()  # roles
    assert "slot" not in dlg.facts_label.text()  # one slot: nothing to say about slots
    assert [b.text() for b in dlg.fix_buttons] == ["Raise the context to 2,048 tokens", "Start a new conversation"]
    assert dlg.fix_buttons[0].isDefault()
    run = small_manager.get("starter")
    assert dlg.log_button.isEnabled() and d.log_path == str(run.proc.log_path)
    screenshot(dlg, "diagnosis_context")

    with qtbot.waitSignal(dlg.log_shown, timeout=5_000) as shown_log:
        qtbot.mouseClick(dlg.log_button, Qt.LeftButton)
    assert shown_log.args[0].path == run.proc.log_path

    # the click: the window relaunches with n_ctx 2048 and resends the same message
    with qtbot.waitSignal(window.reply_finished, timeout=180_000) as finished:
        with qtbot.waitSignal(dlg.fix_chosen, timeout=5_000) as chosen:
            qtbot.mouseClick(dlg.fix_buttons[0], Qt.LeftButton)
        assert chosen.args == [{"n_ctx": 2048}]
        assert not dlg.isVisible() and dlg.result() == QDialog.DialogCode.Accepted
    fin = finished.args[0]
    assert fin.usage.prompt_tokens == n_prompt and fin.finish_reason in ("stop", "length")
    assert small_manager.get("starter").plan.params["n_ctx"] == 2048
    assert [m.role for m in window.history] == ["user", "assistant"] and window.history[0].content == LONG.strip()


def test_action_fix_and_keyboard(qtbot):
    """A fix without parameter changes (new conversation) still reports which fix; Esc closes."""
    from desktop.diagnosis_dialog import DiagnosisDialog
    from engines.diagnosis.types import Diagnosis, Fix, Kind

    d = Diagnosis(Kind.ENGINE_CRASHED, "The engine crashed", "The engine was killed by SIGKILL while answering.",
                  {"signal": 9, "signal_name": "SIGKILL"}, [Fix("Restart the engine", {}, "", action="relaunch")],
                  None, ["line 1", "line 2"])
    dlg = DiagnosisDialog(d)
    qtbot.addWidget(dlg)
    dlg.show()
    assert "Signal:\u00a0SIGKILL" in dlg.facts_label.text()
    assert not dlg.log_button.isEnabled()  # no log file to show
    qtbot.mouseClick(dlg.details_button, Qt.LeftButton)
    assert dlg.log_view.isVisible() and "line 2" in dlg.log_view.toPlainText()
    chosen: list[dict] = []
    dlg.fix_chosen.connect(chosen.append)
    with qtbot.waitSignal(dlg.fix_action):
        qtbot.mouseClick(dlg.fix_buttons[0], Qt.LeftButton)
    assert dlg.chosen.action == "relaunch" and dlg.chosen.label == "Restart the engine"
    assert chosen == [{}]  # a relaunch with the same settings

    # an action without a relaunch (new conversation) never emits fix_chosen
    d2 = Diagnosis(Kind.CONTEXT_EXCEEDED, "t", "e", {}, [Fix("Start a new conversation", {}, "",
                                                             action="new_conversation")])
    dlg3 = DiagnosisDialog(d2)
    qtbot.addWidget(dlg3)
    dlg3.show()
    with qtbot.assertNotEmitted(dlg3.fix_chosen):
        with qtbot.waitSignal(dlg3.fix_action) as action:
            qtbot.mouseClick(dlg3.fix_buttons[0], Qt.LeftButton)
    assert action.args[0].action == "new_conversation"

    dlg2 = DiagnosisDialog(d)
    qtbot.addWidget(dlg2)
    dlg2.show()
    qtbot.keyClick(dlg2, Qt.Key_Escape)
    assert not dlg2.isVisible() and dlg2.result() == QDialog.DialogCode.Rejected


@pytest.mark.logfixture
def test_out_of_memory_dialog_lists_the_fixes_in_order(qtbot, starter_path, screenshot, tmp_path):
    """CUDA out of memory at load (log fixture, fake GPU machine): fewer layers first, each fix with its numbers."""
    from desktop.diagnosis_dialog import DiagnosisDialog
    from engines.diagnosis import diagnose
    from engines.machine.hardware import GPU, HardwareProfile
    gib = 1024 ** 3
    fake_cuda_pc = HardwareProfile("linux", "x86_64", 16, 64 * gib, 58 * gib,
                                   [GPU("NVIDIA GeForce RTX 4090 (fake)", "nvidia", "cuda", 24 * gib, 22 * gib,
                                        "CUDA0")], "fake CPU", False, "cuda")
    plan = launch.plan("starter", fake_cuda_pc, overrides={"n_ctx": 8192})
    lines = ["load_tensors: offloaded 19/19 layers to GPU",
             "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 48.00 MiB on device 0: cudaMalloc failed: "
             "out of memory",
             "alloc_tensor_range: failed to allocate CUDA0 buffer of size 50331648",
             "ember-worker: llama.cpp failed to start: Failed to init server, please check the input params."]
    d = diagnose.diagnose_log(lines, plan, "start", path=str(tmp_path / "engine.log"))
    dlg = DiagnosisDialog(d)
    qtbot.addWidget(dlg)
    dlg.show()
    assert dlg.title_label.text() == "Not enough memory to load the model"
    assert [b.text() for b in dlg.fix_buttons][:3] == ["Put fewer layers on the GPU (14)",
                                                        "Lower the context to 4,096 tokens",
                                                        "Quantize the KV cache (q8_0)"]
    assert "Failed\u00a0allocation:\u00a048\u00a0MiB" in dlg.facts_label.text()
    screenshot(dlg, "diagnosis_oom")
    with qtbot.waitSignal(dlg.fix_chosen) as chosen:
        qtbot.mouseClick(dlg.fix_buttons[2], Qt.LeftButton)
    assert chosen.args == [{"cache_type_k": "q8_0", "cache_type_v": "q8_0"}]


# -- the dialog as a window among windows ------------------------------------------------------------
# Clicks and keys go through the window system (QTest on the QWindow), where Qt drops input to a window
# that a modal dialog blocks; QTest on a widget would hand the event straight to it and never notice.

def click_in_window(widget: QWidget) -> None:
    window = widget.window()
    QTest.mouseClick(window.windowHandle(), Qt.LeftButton, Qt.NoModifier,
                     widget.mapTo(window, widget.rect().center()))


def crash_diagnosis(log: Path | None, tail_lines: int = 12):
    from engines.diagnosis.types import Diagnosis, Fix, Kind
    tail = [f"llama_model_load: line {i} of what the engine printed before it stopped" for i in range(tail_lines)]
    fixes = [Fix("Restart the engine", {}, "Relaunch with the same settings and send the message again.",
                 action="relaunch"),
             Fix("Lower the context to 4,096 tokens", {"n_ctx": 4096},
                 "The KV cache needs less memory with a shorter context; long conversations are cut sooner. "
                 "This note is long enough to wrap over several lines in a dialog of the usual width.")]
    return Diagnosis(Kind.ENGINE_CRASHED, "The engine crashed",
                     "The engine was killed by SIGKILL while answering.\nIf you did not stop it yourself, the "
                     "system may have run out of memory (the kernel's out-of-memory killer sends SIGKILL).",
                     {"signal": 9, "signal_name": "SIGKILL"}, fixes, str(log) if log else None, tail)


def test_the_log_viewer_from_an_error_dialog_scrolls_and_closes_while_the_dialog_is_up(qtbot, tmp_path, store):
    """The chat window's own failure path: its dialog is modal to the chat window; "Show log" must not
    open a viewer that this modality blocks (it could neither scroll nor close)."""
    from desktop.chat_window import ChatWindow
    from desktop.log_viewer import LogViewer
    from engines.running.supervisor import EngineStartError
    log = tmp_path / "engine.log"
    log.write_text("".join(f"llama_model_load: line {i}\n" for i in range(400))
                   + "gguf_init_from_reader: invalid magic characters: '_I??', expected 'GGUF'\n")
    chat = ChatWindow(EngineManager(idle_timeout=None), store=store)
    qtbot.addWidget(chat)
    chat.show()
    qtbot.waitExposed(chat)
    exc = EngineStartError("The llamacpp engine exited with status 1 while starting.", None,
                           log.read_text().splitlines()[-5:], log)
    with qtbot.waitSignal(chat.failure_shown, timeout=10_000) as shown:
        chat.handle_failure(exc, "broken")
    dlg = shown.args[0]
    qtbot.waitExposed(dlg)
    assert dlg.isModal() or dlg.windowModality() != Qt.WindowModality.NonModal  # it still holds the chat window

    click_in_window(dlg.log_button)
    def open_viewers() -> list[LogViewer]:
        return [w for w in chat.findChildren(LogViewer) if w.isVisible()]

    qtbot.waitUntil(lambda: len(open_viewers()) == 1, timeout=5_000)
    viewer = open_viewers()[0]
    qtbot.waitExposed(viewer)
    bar = viewer.text.verticalScrollBar()
    assert bar.maximum() > 0
    qtbot.waitUntil(lambda: bar.value() == bar.maximum(), timeout=2_000)  # opened at the end of a long log
    QTest.keyClick(viewer.windowHandle(), Qt.Key_PageUp)
    qtbot.waitUntil(lambda: bar.value() < bar.maximum(), timeout=2_000)  # it scrolls
    assert dlg.isVisible()
    close = viewer.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Close)
    click_in_window(close)
    qtbot.waitUntil(lambda: open_viewers() == [], timeout=2_000)  # it closes, the dialog still up
    assert dlg.isVisible()

    # a viewer still open when the dialog goes stays open (now the chat window's)
    click_in_window(dlg.log_button)
    qtbot.waitUntil(lambda: len(open_viewers()) == 1, timeout=5_000)
    dlg.reject()
    assert not dlg.isVisible()
    assert len(open_viewers()) == 1 and open_viewers()[0].parentWidget() is chat
    open_viewers()[0].close()


def test_details_grow_the_dialog_and_nothing_is_clipped(qtbot, tmp_path, screenshot):
    from desktop.diagnosis_dialog import DETAIL_LINES, DiagnosisDialog
    dlg = DiagnosisDialog(crash_diagnosis(tmp_path / "engine.log"))
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitExposed(dlg)

    def clipped_labels() -> list[str]:
        return [label.text()[:40] for label in dlg.findChildren(QLabel) if label.isVisible() and label.wordWrap()
                and label.height() < label.heightForWidth(label.width())]

    assert clipped_labels() == []
    before = dlg.height()
    qtbot.mouseClick(dlg.details_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: dlg.log_view.isVisible() and dlg.height() > before, timeout=2_000)
    pane = dlg.log_view
    line = pane.fontMetrics().lineSpacing()
    assert pane.viewport().height() >= DETAIL_LINES * line  # every detail line shows, no 2-line slit
    assert dlg.height() >= before + DETAIL_LINES * line
    assert clipped_labels() == []  # the fixes' notes keep their full height
    screenshot(dlg, "diagnosis-details")
    qtbot.mouseClick(dlg.details_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: dlg.height() < before + line, timeout=2_000)  # and shrinks back
    assert clipped_labels() == []
