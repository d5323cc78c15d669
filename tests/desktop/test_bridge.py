"""The one core->Qt bridge and the one off-thread helper: core events made on worker threads arrive
as typed signals on the GUI thread; run_async hands results and failures back on the GUI thread and
delivers nothing once its owner is gone."""
from __future__ import annotations

import logging
import threading

import pytest
from PySide6.QtWidgets import QWidget

from desktop.bridge import ManagerBridge, run_async, wait_for_calls
from engines.models import downloads as D
from engines.running import launch, supervisor
from engines.running.manager import EngineManager, Running
from tests.helpers import StandInProcess


@pytest.fixture
def plan(fresh_home):
    return launch.plan("starter", overrides={"n_ctx": 512})


def record(bridge: ManagerBridge) -> list[tuple]:
    """(signal name, its arguments, whether it ran on the GUI thread) for every bridge signal."""
    seen: list[tuple] = []

    def recorder(name: str):
        return lambda *args: seen.append((name, args, threading.current_thread() is threading.main_thread()))

    for name in ("loading", "ready", "failed", "stopped", "unloaded", "changed", "download_changed"):
        getattr(bridge, name).connect(recorder(name))
    return seen


def in_a_worker(fn) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join(30)


def test_engine_events_from_a_worker_thread_arrive_typed_on_the_gui_thread(qtbot, plan, monkeypatch):
    monkeypatch.setattr(launch, "start", lambda plan, timeout, cancel: StandInProcess())
    manager = EngineManager(idle_timeout=None)
    bridge = ManagerBridge(manager)
    seen = record(bridge)
    in_a_worker(lambda: manager.launch(plan))
    in_a_worker(lambda: manager.stop("starter"))
    qtbot.waitUntil(lambda: len(seen) == 6, timeout=5_000)
    assert [s[0] for s in seen] == ["loading", "changed", "ready", "changed", "stopped", "changed"]
    assert all(on_gui for _n, _a, on_gui in seen)
    assert seen[0][1] == ("starter", plan)
    name, running = seen[2][1]
    assert name == "starter" and isinstance(running, Running) and running.plan is plan
    assert seen[4][1] == ("starter", "stopped")


def test_a_failed_launch_arrives_with_its_exception(qtbot, plan, monkeypatch, fresh_home):
    problem = supervisor.EngineStartError("the engine exited while loading", None, [], fresh_home / "engine.log")

    def start(plan, timeout, cancel):
        raise problem

    monkeypatch.setattr(launch, "start", start)
    manager = EngineManager(idle_timeout=None)
    bridge = ManagerBridge(manager)
    with qtbot.waitSignal(bridge.failed, timeout=5_000) as blocker:
        in_a_worker(lambda: pytest.raises(supervisor.EngineStartError, manager.launch, plan))
    assert blocker.args == ["starter", problem]


def test_download_changes_arrive_as_the_jobs_name(qtbot, fresh_home):
    downloads = D.DownloadManager(max_parallel=0)  # nothing starts: the queue's own events only
    bridge = ManagerBridge(downloads=downloads)
    seen = record(bridge)
    in_a_worker(lambda: downloads.add("ggml-org/gemma-3-270m-GGUF:gemma-3-270m-Q4_K_M.gguf"))
    qtbot.waitUntil(lambda: bool(seen), timeout=5_000)
    assert seen == [("download_changed", ("ggml-org/gemma-3-270m-GGUF:gemma-3-270m-Q4_K_M.gguf",), True)]
    assert downloads.job(seen[0][1][0]).state == "queued"


def test_a_deleted_bridge_stops_listening(qtbot, plan, monkeypatch, caplog):
    monkeypatch.setattr(launch, "start", lambda plan, timeout, cancel: StandInProcess())
    manager = EngineManager(idle_timeout=None)
    owner = QWidget()
    ManagerBridge(manager, owner)
    owner.deleteLater()
    qtbot.waitUntil(lambda: not _alive(owner), timeout=5_000)
    with caplog.at_level(logging.ERROR, logger="engines.running.manager"):
        manager.launch(plan)
        manager.stop("starter")
    assert "listener failed" not in caplog.text
    assert manager._listeners == [], "the dead bridge unsubscribed itself"


def _alive(obj) -> bool:
    try:
        obj.objectName()
    except RuntimeError:
        return False
    return True


def test_run_async_delivers_results_and_failures_on_the_gui_thread(qtbot):
    got: list[tuple] = []
    main = threading.main_thread()
    run_async(lambda: threading.current_thread().name,
              lambda r: got.append(("done", r, threading.current_thread() is main)), name="ember-test-call")
    run_async(lambda: 1 / 0, None, lambda e: got.append(("error", type(e), threading.current_thread() is main)))
    qtbot.waitUntil(lambda: len(got) == 2, timeout=5_000)
    assert sorted(got) == [("done", "ember-test-call", True), ("error", ZeroDivisionError, True)]


def test_run_async_without_an_error_callback_logs_the_failure(qtbot, caplog):
    with caplog.at_level(logging.WARNING, logger="desktop.bridge"):
        call = run_async(lambda: 1 / 0, name="ember-test-failing")
        assert call.wait(5)
        qtbot.waitUntil(lambda: "ember-test-failing failed: ZeroDivisionError" in caplog.text, timeout=5_000)


def test_run_async_delivers_nothing_once_its_owner_is_deleted(qtbot):
    owner = QWidget()
    release = threading.Event()
    got: list[object] = []
    call = run_async(lambda: release.wait(5), got.append, got.append, name="ember-test-owned", owner=owner)
    owner.deleteLater()
    qtbot.waitUntil(lambda: not _alive(owner), timeout=5_000)
    release.set()
    assert call.wait(5) and wait_for_calls(5)
    qtbot.wait(100)  # a delivery would be queued by now
    assert got == []
