"""A real engine that dies by itself (``kill -9``, what the out-of-memory killer does): the manager
knows within milliseconds, says why, keeps the plan to start it again, and never reports an exit it
asked for (stop, quit, relaunch with new settings)."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import psutil
import pytest

from engines.running import launch, supervisor
from engines.running.manager import EngineCrashed, EngineEvent, EngineManager, EngineReady, EngineStopped

pytestmark = pytest.mark.slow


@pytest.fixture
def manager(fresh_home):
    m = EngineManager(idle_timeout=None)
    yield m
    m.stop_all()


def test_kill_9_of_a_ready_engine_is_an_event_within_two_seconds(manager):
    events: list[tuple[float, EngineEvent]] = []
    crashed = threading.Event()

    def listen(event: EngineEvent) -> None:
        events.append((time.monotonic(), event))
        if isinstance(event, EngineCrashed):
            crashed.set()

    manager.subscribe(listen)
    plan = launch.plan("starter", overrides={"n_ctx": 512})
    run = manager.launch(plan)
    pid = run.proc.pid
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    assert crashed.wait(2.0), "no EngineCrashed within 2 s of kill -9"
    at, event = events[-1]
    assert at - killed_at < 2.0
    assert isinstance(event, EngineCrashed) and event.name == "starter" and event.plan is plan
    assert event.running is run
    assert isinstance(event.error, supervisor.EngineExited)
    assert event.error.status.signal == signal.SIGKILL and event.error.reason == "was killed by SIGKILL"
    assert str(event.error) == "The llamacpp engine of starter was killed by SIGKILL."
    assert event.log_path == str(run.proc.log_path) and event.error.log_tail  # what it printed, for Details
    assert manager.running() == []
    assert manager.get("starter") is run and not run.proc.running  # still there to diagnose, dead
    assert manager.crashed() == {"starter": event}
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    # talking to it again starts it again, with the same plan; the crash is forgotten
    again = manager.ensure_running("starter")
    assert again.proc.running and again.plan is plan and manager.crashed() == {}

    # stopping it (what the tray's Stop and Quit do) is not a crash
    before = len(events)
    manager.stop("starter")
    time.sleep(0.5)
    assert [type(e) for _, e in events[before:]] == [EngineStopped]
    assert manager.crashed() == {}
    print(f"\nkill -9 -> EngineCrashed in {(at - killed_at) * 1000:.1f} ms")


def test_dismissing_a_crashed_engine_tells_the_windows(manager):
    events: list[EngineEvent] = []
    manager.subscribe(events.append)
    run = manager.launch(launch.plan("starter", overrides={"n_ctx": 512}))
    run.proc.proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 2
    while not manager.crashed() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "starter" in manager.crashed()
    assert manager.stop("starter") == supervisor.Stop.NOT_RUNNING
    assert manager.crashed() == {} and manager.get("starter") is None and isinstance(events[-1], EngineStopped)


def test_stop_all_stops_engines_together_and_reports_no_crash(manager):
    events: list[EngineEvent] = []
    manager.subscribe(events.append)
    plan = launch.plan("starter", overrides={"n_ctx": 512})
    manager.launch(plan)
    second = dataclasses.replace(plan.model, name="starter-two")
    manager.launch(launch.plan(second, plan.hardware, overrides={"n_ctx": 512}))
    pids = [r.proc.pid for r in manager.running()]
    assert len(pids) == 2
    started = time.monotonic()
    manager.stop_all()
    took = time.monotonic() - started
    assert manager.running() == [] and manager.crashed() == {}
    assert not any(psutil.pid_exists(p) for p in pids)
    assert not [e for e in events if isinstance(e, EngineCrashed)]
    assert sorted(e.name for e in events if isinstance(e, EngineStopped)) == ["starter", "starter-two"]
    assert [type(e) for e in events].count(EngineReady) == 2
    print(f"\nstop_all of 2 engines: {took:.2f} s")


def test_stopping_an_engine_in_the_middle_of_a_reply_is_prompt(manager):
    """Quit while the starter answers: the engine ends on SIGTERM at once, not after the grace period
    and a SIGKILL (llama.cpp's server object waited for a generation that the client had given up)."""
    from engines.chat import client
    run = manager.launch(launch.plan("starter", overrides={"n_ctx": 2048}))
    stream = client.ChatStream(run.proc.base_url, [{"role": "user", "content": "Count from one to a thousand."}],
                               run.proc.api_key, max_tokens=1000)
    first = threading.Event()
    ended: list[BaseException | None] = []

    def read() -> None:
        try:
            for _ in stream:
                first.set()
        except Exception as exc:
            ended.append(exc)
        else:
            ended.append(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(60), "no reply started"
    started = time.monotonic()
    result = manager.stop("starter")
    took = time.monotonic() - started
    reader.join(10)
    assert result == supervisor.Stop.OK, f"{result.value} after {took:.1f} s"
    assert took < 2.0
    assert ended and ended[0] is not None  # the reply was cut, as the user asked by quitting
    print(f"\nstop during a reply: {took:.2f} s")
