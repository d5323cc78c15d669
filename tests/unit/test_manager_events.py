"""The engine manager's typed events: which ones, in which order, with what, for a launch, a failed
launch, an idle unload, a relaunch and a stop. The engine process is replaced by a stand-in with
the supervisor's interface (real launches are in tests/integration and tests/desktop)."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from engines.running import launch, supervisor
from engines.running.manager import (EngineEvent, EngineFailed, EngineLoading, EngineManager, EngineReady,
                                     EngineStopped, EngineUnloaded)
from tests.helpers import StandInProcess


@pytest.fixture
def plan(starter_path, fresh_home):
    return launch.plan("starter", overrides={"n_ctx": 512})


@pytest.fixture
def started(monkeypatch):
    """launch.start replaced: records the calls, returns a stand-in process."""
    calls: list[launch.LaunchPlan] = []

    def start(plan, timeout, cancel):
        assert isinstance(cancel, threading.Event)
        calls.append(plan)
        return StandInProcess()

    monkeypatch.setattr(launch, "start", start)
    return calls


def test_launch_unload_relaunch_stop_events_in_order(plan, started):
    manager = EngineManager(idle_timeout=60)
    events: list[EngineEvent] = []
    manager.subscribe(events.append)
    run = manager.launch(plan)
    assert [type(e) for e in events] == [EngineLoading, EngineReady]
    assert events[0] == EngineLoading("starter", plan) and events[1].running is run

    assert manager.unload_idle(now=time.monotonic() + 61) == ["starter"]
    assert isinstance(events[2], EngineUnloaded) and events[2].plan is plan
    assert not run.proc.running and manager.unloaded() == {"starter": plan}

    again = manager.ensure_running("starter")
    assert again is not run and started == [plan, plan]
    assert manager.stop("starter") is supervisor.Stop.OK
    assert [type(e) for e in events[3:]] == [EngineLoading, EngineReady, EngineStopped]
    assert events[-1] == EngineStopped("starter", "stopped")
    assert manager.stop("starter") is supervisor.Stop.NOT_RUNNING and len(events) == 6, "no event for nothing"


def test_a_failed_launch_is_an_event_and_raises(plan, monkeypatch, fresh_home):
    problem = supervisor.EngineStartError("the engine exited while loading", None, ["error loading model"],
                                          fresh_home / "engine.log")

    def start(plan, timeout, cancel):
        raise problem

    monkeypatch.setattr(launch, "start", start)
    manager = EngineManager(idle_timeout=None)
    events: list[EngineEvent] = []
    manager.subscribe(events.append)
    with pytest.raises(supervisor.EngineStartError):
        manager.launch(plan)
    assert events == [EngineLoading("starter", plan), EngineFailed("starter", problem)]
    assert events[1].error is problem and manager.loading() == [] and manager.running() == []


def test_a_failing_listener_does_not_stop_the_others_and_unsubscribe_ends_delivery(plan, started, caplog):
    manager = EngineManager(idle_timeout=None)
    seen: list[str] = []

    def broken(event: EngineEvent) -> None:
        raise ValueError("a listener's bug")

    manager.subscribe(broken)
    manager.subscribe(lambda e: seen.append(type(e).__name__))
    with caplog.at_level(logging.ERROR, logger="engines.running.manager"):
        manager.launch(plan)
    assert seen == ["EngineLoading", "EngineReady"]
    assert "listener failed" in caplog.text and "a listener's bug" in caplog.text
    manager.unsubscribe(broken)
    caplog.clear()
    manager.stop_all()
    assert seen[-1] == "EngineStopped" and "listener failed" not in caplog.text
