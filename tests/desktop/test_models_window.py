"""The models window over the real core: this machine (no GPU), a fake GPU machine from JSON,
adding and removing model files, launching, and stopping a real engine."""
from __future__ import annotations

import os
import shutil

import pytest

from engines.machine import hardware
from engines.models import store
from engines.running.launch import LaunchPlan
from engines.running.manager import EngineManager
from tests.helpers import FIXTURES, screenshot_dir

SHOTS = screenshot_dir()



@pytest.fixture
def manager():
    m = EngineManager(idle_timeout=None)
    yield m
    m.stop_all()


def open_window(qtbot, manager, hw=None):
    from desktop.models_window import ModelsWindow
    w = ModelsWindow(manager, hardware=hw)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.models_loaded, timeout=60_000):
        w.show()
    return w


def test_starter_runs_on_the_cpu_here(qtbot, fresh_home, manager, hw):
    if hw.llamacpp_gpus():
        pytest.skip("this machine has a GPU llama.cpp can use")
    w = open_window(qtbot, manager)
    row = w.row_widget("starter")
    assert row is not None, "the starter model is listed on a fresh install"
    assert row.badge.text() == "Runs on the CPU only, slower"
    assert "CPU only" in row.numbers.text()
    assert row.engine_label.text().startswith("Runs with llama.cpp")
    assert row.launch_button.isVisible() and row.launch_button.isEnabled()
    assert not row.remove_button.isVisible(), "the starter cannot be removed"
    assert "GPU" in w.gpu_labels.itemAt(0).widget().text() and "none found" in w.gpu_labels.itemAt(0).widget().text()
    assert f"{hw.cpu_cores} core" in w.cpu_label.text()
    # Why the other engines do not run it, one click away.
    assert not row.why_label.isVisible()
    row.why_toggle.click()
    assert row.why_label.isVisible() and "Transformers" in row.why_label.text()


def test_fake_gpu_profile_fits_on_the_gpu(qtbot, fresh_home, manager):
    hw = hardware.HardwareProfile.load(FIXTURES / "nvidia_24gb.json")  # a fake: this machine has no GPU
    w = open_window(qtbot, manager, hw)
    row = w.row_widget("starter")
    assert row.badge.text() == "Fits on your GPU"
    assert "19 of 19 layers on GPU" in row.numbers.text()
    gpu_text = w.gpu_labels.itemAt(0).widget().text()
    assert "NVIDIA GeForce RTX 4090" in gpu_text and "22.4 GiB free of 24.0 GiB" in gpu_text
    assert not w.gpu_note.isVisible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    w.resize(900, 760)
    qtbot.wait(50)
    assert w.grab().save(str(SHOTS / "models_window_gpu.png"))


def test_small_busy_gpu_takes_part_of_the_layers(qtbot, fresh_home, manager):
    hw = hardware.HardwareProfile.load(FIXTURES / "nvidia_2gb_busy.json")  # a fake: 1,250 MiB free
    w = open_window(qtbot, manager, hw)
    row = w.row_widget("starter")
    layers = row.row["gpu_layers"]
    assert row.row["fit"] == "partial" and 0 < layers < 19
    assert row.badge.text() == f"Partly on GPU: {layers} of 19 layers"


def test_gpu_that_llamacpp_cannot_use_is_explained(qtbot, fresh_home, manager):
    hw = hardware.HardwareProfile.load(FIXTURES / "nvidia_cpu_build.json")  # a fake, real shape
    w = open_window(qtbot, manager, hw)
    assert w.gpu_note.isVisible()
    assert "llama.cpp cannot use NVIDIA GeForce RTX 3060" in w.gpu_note.text()
    assert w.row_widget("starter").badge.text() == "Runs on the CPU only, slower"


def test_only_models_that_run_here(qtbot, fresh_home, manager):
    w = open_window(qtbot, manager)
    runs = {n for n, r in w.row_widgets.items() if r.row["fit"] in ("gpu", "partial", "cpu")}
    w.only_runnable.setChecked(True)
    visible = {n for n, r in w.row_widgets.items() if r.isVisible()}
    assert visible == runs and "starter" in visible
    w.only_runnable.setChecked(False)
    assert sum(r.isVisible() for r in w.row_widgets.values()) == len(w.row_widgets)
    qtbot.keyClicks(w.search, "gemma 270m")
    shown = [n for n, r in w.row_widgets.items() if r.isVisible()]
    assert "starter" in shown and all(n == "starter" or n.startswith("gemma-3-270m") for n in shown)
    assert w.count_label.text() == f"{len(shown)} of {len(w.row_widgets)} models"
    w.search.clear()
    assert sum(r.isVisible() for r in w.row_widgets.values()) == len(w.row_widgets)


def _core_problem(path) -> str:
    with pytest.raises(store.ModelError) as info:
        store.spec_from_path(path)
    return info.value.problem


def test_add_model_file_refuses_broken_files_with_the_cores_reason(qtbot, fresh_home, manager, starter_path,
                                                                   tmp_path):
    w = open_window(qtbot, manager)
    truncated = tmp_path / "half.gguf"
    with open(starter_path, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(4 * 1024 * 1024))
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not a model\n")
    for bad in (truncated, text):
        problem = _core_problem(bad)
        assert w.import_path(bad) is None
        assert w.notice.isVisible()
        assert w.notice_label.text() == f"{bad.name} was not added: {problem}"
    assert store.local_models(assemble_starter=False)[1:] == [], "nothing was added"
    assert not any(n.startswith(("half", "notes")) for n in w.row_widgets)


def test_add_a_real_model_file_then_remove_it(qtbot, fresh_home, manager, starter_path, tmp_path):
    w = open_window(qtbot, manager)
    mine = tmp_path / "my-gemma.gguf"
    try:
        os.link(starter_path, mine)
    except OSError:
        shutil.copy2(starter_path, mine)
    with qtbot.waitSignal(w.models_loaded, timeout=60_000):
        spec = w.import_path(mine)
    assert spec is not None and spec.name == "my-gemma"
    assert "Added" in w.notice_label.text()
    row = w.row_widget("my-gemma")
    assert row is not None and row.remove_button.isVisible()
    assert row.badge.text() in ("Runs on the CPU only, slower", "Fits on your GPU")
    with qtbot.waitSignal(w.models_loaded, timeout=60_000):
        row.remove_button.click()
    assert w.row_widget("my-gemma") is None
    assert mine.exists(), "Remove never deletes the file"
    assert "was not deleted" in w.notice_label.text()


def test_launch_from_the_window_emits_a_plan(qtbot, fresh_home, manager):
    w = open_window(qtbot, manager)
    dlg = w.open_launch_dialog("starter")
    assert dlg is not None and dlg.isVisible()
    dlg.ctx_spin.setValue(2048)
    with qtbot.waitSignal(w.launch_requested, timeout=10_000) as blocker:
        dlg.launch_button.click()
    plan = blocker.args[0]
    assert isinstance(plan, LaunchPlan)
    assert plan.model.name == "starter" and plan.engine == "llamacpp" and plan.params["n_ctx"] == 2048


@pytest.mark.slow
def test_running_model_is_marked_and_stops(qtbot, fresh_home, manager):
    w = open_window(qtbot, manager)
    from engines.running import launch
    plan = launch.plan("starter", w.hw, overrides={"n_ctx": 1024})
    manager.launch(plan, timeout=120)
    row = w.row_widget("starter")
    qtbot.waitUntil(lambda: row.state == "running", timeout=5_000)
    assert row.running_label.text() == "\u25cf Running"
    assert row.stop_button.isVisible() and row.stop_button.isEnabled()
    row.stop_button.click()
    assert not row.stop_button.isEnabled() or row.state is None  # "Stopping..." while it stops
    qtbot.waitUntil(lambda: row.state is None and not manager.running(), timeout=30_000)
    assert not row.stop_button.isVisible()


def test_screenshot_models_window(qtbot, fresh_home, manager):
    w = open_window(qtbot, manager)
    w.resize(900, 760)
    qtbot.wait(50)
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert w.grab().save(str(SHOTS / "models_window.png"))


def test_keyboard_reaches_the_actions(qtbot, fresh_home, manager):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QAbstractButton, QLineEdit
    w = open_window(qtbot, manager)
    chain, x = [], w.nextInFocusChain()
    while x is not w and len(chain) < 5000:
        if (x.focusPolicy() & Qt.TabFocus) and x.isVisibleTo(w) and x.isEnabled():
            chain.append(x)
        x = x.nextInFocusChain()
    row = w.row_widget("starter")
    for control in (w.refresh_button, w.add_file_button, w.search, w.only_runnable, w.sort_combo,
                    row.launch_button, row.why_toggle):
        assert control in chain
    assert chain.index(w.sort_combo) < chain.index(row.launch_button) < chain.index(row.why_toggle)
    w.import_path(__file__)  # shows the dismissable notice
    for b in w.findChildren(QAbstractButton):
        if len(b.text().strip("&")) <= 1 and not isinstance(b.parent(), QLineEdit):  # not Qt's own clear button
            assert b.accessibleName(), "icon-only buttons carry an accessible name"


def test_dropping_a_file_adds_it(qtbot, fresh_home, manager, starter_path, tmp_path):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent
    w = open_window(qtbot, manager)
    dropped = tmp_path / "dropped.gguf"
    try:
        os.link(starter_path, dropped)
    except OSError:
        shutil.copy2(starter_path, dropped)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(dropped))])
    event = QDropEvent(QPointF(10, 10), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    with qtbot.waitSignal(w.models_loaded, timeout=60_000):
        w.dropEvent(event)
    assert w.row_widget("dropped") is not None
