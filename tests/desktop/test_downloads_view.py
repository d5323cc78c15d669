"""The downloads panel over the real download core and a FAKE hub on 127.0.0.1; embedded in the models window."""
from __future__ import annotations


import pytest

from engines.models import downloads as D
from engines.models import records
from engines.machine import hardware
from engines.running.manager import EngineManager
from tests.fakehub.server import FakeHub
from tests.helpers import FIXTURES, screenshot_dir

SHOTS = screenshot_dir()
REPO, FILE = "ggml-org/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf"
NAME = f"{REPO}:{FILE}"



@pytest.fixture
def hub(starter_path, tmp_path, monkeypatch, fresh_home):
    h = FakeHub()
    h.add(REPO, FILE, starter_path, throttle_bps=40_000_000)
    h.start()
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield h
    h.stop()


def test_queue_progress_pause_resume_and_delete(qtbot, hub):
    from desktop.downloads_view import DownloadsView
    view = DownloadsView(D.DownloadManager(max_parallel=1))
    qtbot.addWidget(view)
    view.resize(720, 300)
    view.show()
    assert view.empty.isVisible()
    view.add(NAME)
    qtbot.waitUntil(lambda: NAME in view.rows and view.rows[NAME].bar.value() > 150, timeout=30_000)
    row = view.rows[NAME]
    assert row.state.text() == "Downloading"
    numbers = row.numbers.text()
    assert " of 241 MiB \u00b7 " in numbers and "MiB/s" in numbers and "left" in numbers
    SHOTS.mkdir(exist_ok=True)
    view.grab().save(str(SHOTS / "downloads_panel_downloading.png"))
    row.pause_button.click()
    qtbot.waitUntil(lambda: row.state.text() == "Paused", timeout=30_000)
    assert row.numbers.text().startswith("Paused at ") and "partial file is kept" in row.numbers.text()
    assert row.pause_button.text() == "Resume"
    hub.repos[REPO].files[FILE].throttle_bps = None
    with qtbot.waitSignal(view.model_ready, timeout=60_000):
        row.pause_button.click()
    assert row.state.text() == "Ready (verified)" and row.bar.value() == 1000
    assert "241 MiB on disk" in view.disk_title.text()
    qtbot.wait(100)
    view.grab().save(str(SHOTS / "downloads_panel_ready.png"))
    with qtbot.waitSignal(view.deleted, timeout=30_000):
        view.delete_model(NAME)
    assert records.ready_path(NAME) is None and "none yet" in view.disk_title.text()


def test_embedded_in_the_models_window_with_a_download_action(qtbot, hub):
    from desktop.models_window import ModelsWindow
    manager = EngineManager(idle_timeout=None)
    hw = hardware.HardwareProfile.load(FIXTURES / "nvidia_24gb.json")
    w = ModelsWindow(manager, hardware=hw, downloads=D.DownloadManager(max_parallel=1))
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.models_loaded, timeout=60_000):
        w.show()
    view = w.downloads_view
    row = w.row_widget("deepseek-r1-0528-qwen3-8b-q4_k_m")
    assert row is not None and row.download_button.isVisible()
    # the fake hub does not have that repository: the queue shows the typed error, the GUI stays alive
    row.download_button.click()
    qtbot.waitUntil(lambda: "deepseek-r1-0528-qwen3-8b-q4_k_m" in view.rows
                    and view.rows["deepseek-r1-0528-qwen3-8b-q4_k_m"].state.text() == "Failed", timeout=30_000)
    assert "was not found on " + hub.url in view.rows["deepseek-r1-0528-qwen3-8b-q4_k_m"].error.text()
    w.resize(900, 900)
    qtbot.waitUntil(lambda: view.rows["deepseek-r1-0528-qwen3-8b-q4_k_m"].isVisible(), timeout=5_000)
    qtbot.wait(100)  # let the layout settle before the picture
    SHOTS.mkdir(exist_ok=True)
    w.grab().save(str(SHOTS / "models_window_with_downloads.png"))
    manager.stop_all()
