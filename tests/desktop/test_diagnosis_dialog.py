"""The guided error dialog over a real engine failure: a too-long message with a small
context, the dialog's numbers, and a click on the fix that relaunches the engine
(through the EngineManager, off the GUI thread) and completes the same chat."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QThreadPool
from PySide6.QtWidgets import QDialog

from engines import client, diagnosis, launch
from engines.manager import EngineManager

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("EMBER_SCREENSHOTS", ROOT / "screenshots"))
LONG = "The quick brown fox jumps over the lazy dog. " * 100  # about 1,000 tokens


@pytest.fixture(autouse=True)
def _drain_pool():
    yield
    QThreadPool.globalInstance().waitForDone(60_000)


@pytest.fixture
def manager():
    m = EngineManager(idle_timeout=None)
    yield m
    m.stop_all()


def _send(running, text):
    messages = [{"role": "user", "content": text}]
    return list(client.ChatStream(running.proc.base_url, messages, running.proc.api_key, max_tokens=8,
                                  temperature=0))


def test_context_error_dialog_fix_relaunches_and_completes(qtbot, manager, starter_spec, hw):
    from desktop.bridge import run_async
    from desktop.diagnosis_dialog import DiagnosisDialog

    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 512})
    running = manager.launch(plan)
    with pytest.raises(client.EngineHTTPError) as info:
        _send(running, LONG)
    d = diagnosis.diagnose_exception(info.value, proc=running.proc, plan=plan)
    n_prompt = d.facts["n_prompt_tokens"]

    dlg = DiagnosisDialog(d)
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitExposed(dlg)
    # words first, numbers in them and below them
    assert dlg.title_label.text() == "The conversation is longer than the engine's context"
    assert f"Your message needs {n_prompt:,} tokens; each slot holds 512 (n_ctx 512 / n_parallel 1)." \
        in dlg.explanation_label.text()
    assert f"Message tokens: {n_prompt:,}" in dlg.facts_label.text()
    assert "Context per slot: 512" in dlg.facts_label.text()
    assert [b.text() for b in dlg.fix_buttons] == ["Raise the context to 2,048 tokens", "Start a new conversation"]
    assert dlg.fix_buttons[0].isDefault()
    assert dlg.log_button.isEnabled()
    SHOTS.mkdir(parents=True, exist_ok=True)
    dlg.grab().save(str(SHOTS / "diagnosis_context.png"))

    logs: list[str] = []
    dlg.show_log_requested.connect(logs.append)
    qtbot.mouseClick(dlg.log_button, Qt.LeftButton)
    assert logs == [str(running.proc.log_path)]

    # the click: the changes come out, the dialog closes, the chat window relaunches and resends
    results: list[object] = []
    calls = []  # keep the Call alive until its queued result arrives

    def apply_fix(changes: dict):
        new_plan = plan.with_changes(changes)
        calls.append(run_async(lambda: _send(manager.launch(new_plan), LONG), results.append, results.append))

    dlg.fix_chosen.connect(apply_fix)
    with qtbot.waitSignal(dlg.fix_chosen, timeout=5_000) as sig:
        qtbot.mouseClick(dlg.fix_buttons[0], Qt.LeftButton)
    assert sig.args == [{"n_ctx": 2048}]
    assert not dlg.isVisible() and dlg.result() == QDialog.DialogCode.Accepted
    qtbot.waitUntil(lambda: bool(results), timeout=120_000)
    events = results[0]
    assert isinstance(events, list), events
    finished = events[-1]
    assert isinstance(finished, client.Finished) and finished.usage.prompt_tokens == n_prompt
    assert manager.get(starter_spec.name).plan.params["n_ctx"] == 2048


def test_action_fix_and_keyboard(qtbot):
    """A fix without parameter changes (new conversation) still reports which fix; Esc closes."""
    from desktop.diagnosis_dialog import DiagnosisDialog
    from engines.diagnosis import Diagnosis, Fix, Kind

    d = Diagnosis(Kind.ENGINE_CRASHED, "The engine crashed", "The engine was killed by SIGKILL while answering.",
                  {"signal": 9, "signal_name": "SIGKILL"}, [Fix("Restart the engine", {}, "", action="relaunch")],
                  None, ["line 1", "line 2"])
    dlg = DiagnosisDialog(d)
    qtbot.addWidget(dlg)
    dlg.show()
    assert "Signal: SIGKILL" in dlg.facts_label.text()
    assert not dlg.log_button.isEnabled()  # no log file to show
    qtbot.mouseClick(dlg.details_button, Qt.LeftButton)
    assert dlg.log_view.isVisible() and "line 2" in dlg.log_view.toPlainText()
    with qtbot.waitSignal(dlg.fix_action) as sig:
        qtbot.mouseClick(dlg.fix_buttons[0], Qt.LeftButton)
    assert sig.args[0].action == "relaunch" and dlg.chosen.label == "Restart the engine"

    dlg2 = DiagnosisDialog(d)
    qtbot.addWidget(dlg2)
    dlg2.show()
    qtbot.keyClick(dlg2, Qt.Key_Escape)
    assert not dlg2.isVisible() and dlg2.result() == QDialog.DialogCode.Rejected
