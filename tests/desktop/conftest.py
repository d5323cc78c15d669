"""Desktop fixtures: a real EngineManager with the starter model, a fresh conversation store,
and where the suite writes its screenshots (EMBER_SCREENSHOTS, default screenshots/)."""
from __future__ import annotations

import gc
from pathlib import Path

import pytest
from PySide6.QtCore import QThreadPool

from desktop.bridge import wait_for_calls
from tests.helpers import screenshot_dir


def screenshot(widget, name: str) -> Path:
    """Save a grab of a widget (offscreen works) as screenshots/<name>.png."""
    path = screenshot_dir() / f"{name}.png"
    assert widget.grab().save(str(path)), f"could not save {path}"
    return path


@pytest.fixture(name="screenshot")
def screenshot_fixture():
    """screenshot(widget, name): the suite's screenshots of each window."""
    return screenshot


@pytest.fixture(scope="module")
def manager(starter_path):
    """An EngineManager with the starter model running (n_ctx 2048), shared by a module's tests."""
    from engines.running import launch
    from engines.running.manager import EngineManager
    m = EngineManager(idle_timeout=None)
    m.launch(launch.plan("starter", overrides={"n_ctx": 2048}))
    yield m
    m.stop_all()


@pytest.fixture
def store(tmp_path):
    from engines.chat.conversations import Store
    s = Store(tmp_path / "chats.sqlite3")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _collect_on_gui_thread(qapp):
    """As in the app: reference cycles holding Qt objects are collected on the GUI thread only."""
    from desktop.bridge import GuiThreadCollector
    collector = GuiThreadCollector().start()
    yield
    collector.stop()
    gc.collect()  # here, on the GUI thread, not later in some worker


@pytest.fixture(autouse=True)
def _drain_background_work():
    """Work a test started off the GUI thread (run_async, Qt's thread pool) ends before the next test's
    widgets exist, and before its EMBER_HOME goes away."""
    yield
    wait_for_calls(60)
    QThreadPool.globalInstance().waitForDone(60_000)
