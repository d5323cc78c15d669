"""The launch dialog over the real core: validation as the user types with the core's words,
the plan it returns, the estimate and warnings, and choices remembered per model."""
from __future__ import annotations


import pytest
from PySide6.QtCore import Qt

from engines.machine import hardware
from engines import model_prefs
from engines.models import store
from tests.helpers import FIXTURES, screenshot_dir

SHOTS = screenshot_dir()



@pytest.fixture
def spec(fresh_home):
    return store.resolve_local("starter")


def make_dialog(qtbot, spec, hw):
    from desktop.launch_dialog import LaunchDialog
    dlg = LaunchDialog(spec, hw)
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitUntil(lambda: not dlg.is_estimating(), timeout=30_000)
    return dlg


def test_unknown_key_shows_the_suggestion_and_blocks_launch(qtbot, spec, hw):
    dlg = make_dialog(qtbot, spec, hw)
    assert dlg.launch_button.isEnabled()
    row = dlg.rows[0]
    qtbot.keyClicks(row.key_edit, "sampling.top_kk")
    qtbot.keyClicks(row.value_edit, "40")
    assert row.error.isVisible()
    assert row.error.text() == ("sampling.top_kk is not a llama.cpp parameter; "
                                "did you mean sampling.top_k or sampling.top_p or sampling.typ_p?")
    assert not dlg.launch_button.isEnabled()
    qtbot.waitUntil(lambda: dlg.height() >= dlg.layout().totalHeightForWidth(dlg.width()), timeout=2_000)
    assert row.key_edit.height() >= row.key_edit.minimumSizeHint().height(), "the message squashes nothing"
    dlg.accept()  # Enter on the dialog must not launch either
    assert dlg.plan() is None and dlg.isVisible()

    row.key_edit.setText("sampling.top_k")
    assert not row.error.isVisible()
    assert dlg.launch_button.isEnabled()
    row.value_edit.setText("lots")
    assert row.error.text() == "sampling.top_k expects an integer, got 'lots'"
    assert not dlg.launch_button.isEnabled()
    row.value_edit.setText("40")
    dlg.launch_button.click()
    assert dlg.plan() is not None and dlg.plan().user_params["sampling.top_k"] == 40


def test_typing_key_equals_value_fills_both_boxes(qtbot, spec, hw):
    dlg = make_dialog(qtbot, spec, hw)
    row = dlg.rows[0]
    qtbot.keyClicks(row.key_edit, "sampling.min_p =")
    assert row.pair() == ("sampling.min_p", ""), "the '=' moves on to the value box"
    qtbot.keyClicks(row.value_edit, "0.1")
    assert row.pair() == ("sampling.min_p", "0.1")
    assert not row.error.isVisible()
    second = dlg.add_advanced_row()
    second.key_edit.selectAll()
    second.key_edit.insert("sampling.top_k = 40")  # what a paste does
    assert second.pair() == ("sampling.top_k", "40")


def test_plan_has_the_chosen_context_and_slots(qtbot, spec, hw):
    dlg = make_dialog(qtbot, spec, hw)
    assert dlg.ctx_spin.value() == 4096, "Ember's default: min(4096, trained context)"
    dlg.ctx_spin.setValue(2048)
    dlg.parallel_spin.setValue(2)
    assert dlg.ctx_help.text() == "Each of the 2 slots holds 1,024 tokens"
    dlg.temp_spin.setValue(0.3)
    qtbot.mouseClick(dlg.launch_button, Qt.LeftButton)
    p = dlg.plan()
    assert p.params["n_ctx"] == 2048 and p.params["n_parallel"] == 2
    assert p.params["sampling.temp"] == pytest.approx(0.3)
    assert p.engine == "llamacpp"


def test_context_beyond_training_warns_inline(qtbot, spec, hw):
    dlg = make_dialog(qtbot, spec, hw)
    assert not dlg.warnings_label.isVisible()
    dlg.ctx_spin.setValue(65536)
    qtbot.waitUntil(lambda: dlg.warnings_label.isVisible(), timeout=10_000)
    assert "larger than the context the model was trained on (32,768)" in dlg.warnings_label.text()


def test_auto_gpu_layers_shows_the_estimate(qtbot, spec):
    gpu = hardware.HardwareProfile.load(FIXTURES / "nvidia_24gb.json")  # a fake GPU machine
    dlg = make_dialog(qtbot, spec, gpu)
    assert dlg.auto_layers.isChecked() and not dlg.layers_spin.isEnabled()
    # the layers, then the one memory arithmetic (the models window's and the diagnosis' numbers too)
    assert dlg.estimate_label.text().startswith("19 of 19 layers on GPU\nneeds about ")
    assert "weights 235 MiB, KV cache 27 MiB, compute 24 MiB" in dlg.estimate_label.text()
    assert dlg.layers_spin.value() == 19, "the greyed box shows what Auto chose"
    before = dlg.estimate_label.text()
    dlg.ctx_spin.setValue(32768)
    dlg.parallel_spin.setValue(4)
    qtbot.waitUntil(lambda: not dlg.is_estimating() and dlg.estimate_label.text() != before, timeout=10_000)
    assert "KV cache" in dlg.estimate_label.text()
    dlg.auto_layers.setChecked(False)
    dlg.layers_spin.setValue(5)
    dlg.launch_button.click()
    assert dlg.plan().params["n_gpu_layers"] == 5


def test_choices_are_remembered_per_model(qtbot, spec, hw):
    dlg = make_dialog(qtbot, spec, hw)
    dlg.ctx_spin.setValue(3072)
    dlg.parallel_spin.setValue(3)
    dlg.top_k_spin.setValue(20)
    dlg.rows[0].key_edit.setText("sampling.min_p")
    dlg.rows[0].value_edit.setText("0.07")
    dlg.launch_button.click()
    assert model_prefs.load("starter") is not None

    again = make_dialog(qtbot, spec, hw)
    assert again.ctx_spin.value() == 3072
    assert again.parallel_spin.value() == 3
    assert again.top_k_spin.value() == 20
    assert [r.pair() for r in again.rows] == [("sampling.min_p", "0.07")]
    assert again.advanced_box.isVisible()
    again.launch_button.click()
    assert again.plan().user_params["sampling.min_p"] == pytest.approx(0.07)
    assert model_prefs.load("another-model") is None, "choices belong to one model"

    third = make_dialog(qtbot, spec, hw)
    third.reset_button.click()
    assert third.ctx_spin.value() == 4096 and third.parallel_spin.value() == 1 and third.top_k_spin.value() == 40
    assert [r.pair() for r in third.rows] == [("", "")]


def test_broken_prefs_file_is_survived(qtbot, spec, hw):
    model_prefs.prefs_path().write_text("{not json")
    dlg = make_dialog(qtbot, spec, hw)
    assert dlg.ctx_spin.value() == 4096 and dlg.launch_button.isEnabled()


def test_screenshot_launch_dialog_with_an_invalid_row(qtbot, spec):
    gpu = hardware.HardwareProfile.load(FIXTURES / "nvidia_24gb.json")
    dlg = make_dialog(qtbot, spec, gpu)
    dlg.rows[0].key_edit.setText("sampling.top_kk")
    dlg.rows[0].value_edit.setText("40")
    ok = dlg.add_advanced_row("sampling.min_p", "0.05")
    assert not ok.error.isVisible()
    qtbot.wait(50)
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert dlg.grab().save(str(SHOTS / "launch_dialog_invalid.png"))
    dlg.rows[0].key_edit.setText("sampling.top_k")
    dlg.ctx_spin.setValue(8192)
    qtbot.waitUntil(lambda: not dlg.is_estimating(), timeout=10_000)
    qtbot.wait(50)
    assert dlg.grab().save(str(SHOTS / "launch_dialog.png"))


def test_other_engines_get_their_own_fields(qtbot, fresh_home, hw):
    """A safetensors folder runs on Transformers: its schema's fields, not llama.cpp's."""
    from engines.running import launch
    from engines.running import params as P
    from engines.running import backends
    from engines.running.backends import availability
    if not availability("transformers").installed:
        pytest.skip("transformers is not installed")
    from tests.fixtures.safetensors_model import ensure
    spec = store.spec_from_folder(ensure())
    dlg = make_dialog(qtbot, spec, hw)
    assert dlg.engine == "transformers"
    assert dlg.ctx_spin.isVisible(), "max_model_len is the context size"
    assert not dlg.parallel_spin.isVisible() and not dlg.auto_layers.isVisible(), "llama.cpp-only fields hidden"
    assert dlg.top_k_spin.isVisible() and dlg.temp_spin.isVisible()
    assert "Transformers" in dlg.advanced_toggle.text()
    row = dlg.rows[0]
    row.key_edit.setText("sampling.top_k")
    row.value_edit.setText("40")
    with pytest.raises(P.ParamError) as info:
        backends.get("transformers").validate({"sampling.top_k": "40"})
    assert row.error.text() == info.value.message
    assert not dlg.launch_button.isEnabled()
    row.key_edit.setText("")
    row.value_edit.setText("")
    dlg.ctx_spin.setValue(1024)
    dlg.launch_button.click()
    p = dlg.plan()
    assert p is not None and p.engine == "transformers" and p.params["max_model_len"] == 1024


def _tab_chain(window):
    """Widgets Tab visits, in order (what focusNextChild walks)."""
    chain, w = [], window.nextInFocusChain()
    while w is not window and len(chain) < 1000:
        if (w.focusPolicy() & Qt.TabFocus) and w.isVisibleTo(window) and w.isEnabled():
            chain.append(w)
        w = w.nextInFocusChain()
    return chain


def test_every_control_is_reachable_with_tab_and_named(qtbot, spec, hw):
    from PySide6.QtWidgets import QAbstractButton
    dlg = make_dialog(qtbot, spec, hw)
    dlg.advanced_toggle.setChecked(True)
    dlg.auto_layers.setChecked(False)
    row = dlg.rows[0]
    chain = _tab_chain(dlg)
    wanted = [dlg.engine_combo, dlg.ctx_spin, dlg.parallel_spin, dlg.auto_layers, dlg.layers_spin, dlg.temp_spin,
              dlg.top_p_spin, dlg.top_k_spin, dlg.advanced_toggle, row.key_edit, row.value_edit,
              row.remove_button, dlg.add_row_button, dlg.launch_button]
    for w in wanted:
        target = w.focusProxy() or w
        assert target in chain or w in chain, f"{w.accessibleName() or w} is not reachable with Tab"
    for b in dlg.findChildren(QAbstractButton):
        if len(b.text().strip("&")) <= 1:
            assert b.accessibleName(), "icon-only buttons carry an accessible name"
