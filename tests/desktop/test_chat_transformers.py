"""The chat window with a Transformers model (the CPU engine, the starter converted to safetensors):
the one-click start of the last model used speaks the engine's context key (``max_model_len``, not
llama.cpp's ``n_ctx``), and a too-long message's context fix relaunches it, answers, and is kept as
the model's choice for its next start."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from engines import model_prefs, settings
from engines.models import store as model_store
from engines.running import launch
from engines.running.backends import availability
from engines.running.manager import EngineManager

pytestmark = pytest.mark.slow

LONG = "The quick brown fox jumps over the lazy dog. " * 100  # about 1,000 tokens


@pytest.fixture
def transformers_model(fresh_home, starter_path):
    if not availability("transformers").installed:
        pytest.skip("transformers is not installed")
    from tests.fixtures.safetensors_model import ensure
    spec = model_store.add_local(ensure(starter_path))
    settings.set("last_model", spec.name)   # what the "no model" row offers
    settings.set("default_n_ctx", 512)      # a one-click start's context: too small for LONG
    return spec.name


@pytest.fixture
def window(qtbot, transformers_model, store):
    from desktop.chat_window import ChatWindow
    m = EngineManager(idle_timeout=None)
    w = ChatWindow(m, store=store)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()
    m.stop_all()


def test_one_click_start_and_a_context_fix_for_a_transformers_model(qtbot, window, transformers_model, screenshot):
    from desktop.diagnosis_dialog import DiagnosisDialog
    w, name = window, transformers_model
    w.dismiss_welcome()
    assert w.engine.offer.isVisible() and w.engine.offer.button.text() == f"Start {name}"
    with qtbot.waitSignal(w.busy_changed, timeout=5_000, check_params_cb=lambda busy: busy):
        qtbot.mouseClick(w.engine.offer.button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.loading, timeout=240_000)
    run = w.manager.get(name)
    assert run is not None and run.proc.running, w.status.text()
    assert run.plan.engine == "transformers"
    assert run.plan.params["max_model_len"] == 512 and "n_ctx" not in run.plan.params  # its own key
    assert w.current_model_name() == name

    w.max_tokens = 8
    with qtbot.waitSignal(w.failure_shown, timeout=240_000) as shown:
        w.send(LONG)
    dlg = shown.args[0]
    assert isinstance(dlg, DiagnosisDialog), getattr(dlg, "text", lambda: "")()
    qtbot.waitExposed(dlg)
    d = dlg.diagnosis
    n_prompt = d.facts["n_prompt_tokens"]
    assert d.kind == "context_exceeded" and n_prompt > 512
    assert f"Your message needs {n_prompt:,} tokens" in dlg.explanation_label.text()  # one message: no history
    fix = d.fixes[0]
    assert list(fix.changes) == ["max_model_len"] and fix.changes["max_model_len"] > n_prompt
    new_ctx = fix.changes["max_model_len"]
    assert dlg.fix_buttons[0].text() == fix.label and dlg.fix_buttons[0].isDefault()
    assert f"--set max_model_len={new_ctx}" in dlg.fix_buttons[0].toolTip()  # and the terminal's command
    screenshot(dlg, "diagnosis_context_transformers")

    with qtbot.waitSignal(w.reply_finished, timeout=240_000) as finished:
        qtbot.mouseClick(dlg.fix_buttons[0], Qt.MouseButton.LeftButton)
        assert w.engine.busy.label.text() == f"Restarting {name} with context {new_ctx:,} tokens\u2026"
    fin = finished.args[0]
    assert fin.usage.prompt_tokens == n_prompt and fin.finish_reason in ("stop", "length")
    assert w.manager.get(name).plan.params["max_model_len"] == new_ctx
    assert [m.role for m in w.history] == ["user", "assistant"]
    # kept: the model's next start (this window's one click, the local API's on-demand load) has it
    assert model_prefs.load(name).engine == "transformers"
    assert model_prefs.load(name).params["max_model_len"] == new_ctx
    assert launch.default_plan(name).params["max_model_len"] == new_ctx
