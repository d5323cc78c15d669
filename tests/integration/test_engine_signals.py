"""Issue 12 (4), provoked for real: the starter's engine gets kill -9, SIGTERM or SIGSTOP while
``ember chat`` streams its answer. Each is named for what it is (not "could not start", not a memory
problem without evidence), ``ember chat`` ends within seconds (a paused engine does not leave it
silent for minutes), the engine is gone afterwards, and the offered fix (restart) works."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from engines.chat.client import ChatStream, Delta, EngineStalled
from engines.diagnosis import diagnose
from engines.running import launch, stall
from engines.running.stall import StallWatch
from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def chat_then_signal(sig: int) -> tuple[subprocess.CompletedProcess, float, psutil.Process]:
    """``ember chat --json`` on a long answer; ``sig`` to its engine once the answer streams."""
    proc = subprocess.Popen([sys.executable, "-m", "engines.cli", "chat", "starter", "--json", "--max-tokens", "3000",
                             "--set", "n_ctx=4096", "--set", "sampling.temp=0", "Write a long story about the sea."],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children()
        if kids:
            engine = kids[0]
            break
        time.sleep(0.2)
    assert engine is not None, "no engine started"
    first = proc.stdout.read(40)  # the answer is streaming
    assert first.strip()
    sent = time.monotonic()
    os.kill(engine.pid, sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err), time.monotonic() - sent, engine


def report(err: str) -> dict:
    start = err.index("{")
    return json.loads(err[start:])


def gone(engine: psutil.Process) -> bool:
    return not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE


def test_kill_9_mid_answer_is_a_kill_not_a_memory_problem_without_evidence(fresh_home):
    out, took, engine = chat_then_signal(signal.SIGKILL)
    d = report(out.stderr)
    assert out.returncode == 1 and took < 10 and d["kind"] == "engine_crashed"
    assert d["title"] == "The engine was killed while answering" and d["facts"]["signal_name"] == "SIGKILL"
    assert "memory does not look like the cause" in d["explanation"]  # this machine has GiBs free
    assert [f["action"] for f in d["fixes"]] == ["relaunch"] and not any(f["changes"] for f in d["fixes"])
    assert d["stop_reason"] == "engine_failed"


def test_sigterm_mid_answer_is_said_as_stopped_from_outside(fresh_home):
    out, took, engine = chat_then_signal(signal.SIGTERM)
    d = report(out.stderr)
    assert out.returncode == 1 and took < 10
    assert d["title"] == "The engine was stopped from outside Ember" and "SIGTERM" in d["explanation"]
    assert "status 0" not in d["explanation"] and "could not start" not in d["explanation"]
    assert [f["label"] for f in d["fixes"]] == ["Start it again"]


def test_sigstop_mid_answer_is_a_stall_found_in_seconds_and_the_engine_is_stopped(fresh_home):
    out, took, engine = chat_then_signal(signal.SIGSTOP)
    d = report(out.stderr)
    assert out.returncode == 1 and took < 20, took  # not minutes of silence
    assert d["kind"] == "engine_stalled" and d["facts"]["paused"] is True and "paused" in d["explanation"]
    assert d["fixes"][0]["action"] == "relaunch"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not gone(engine):
        time.sleep(0.2)
    assert gone(engine)
    print(f"\nSIGSTOP mid-answer: ember chat ended {took:.1f} s later")


def test_a_silent_engine_past_the_timeout_is_a_stall_and_the_restart_answers(fresh_home, monkeypatch):
    """Silence alone, past the timeout, is a stall: the engine is paused, but the process check is
    blinded here (as where process states cannot be read), so only the timeout can catch it. The
    restart the diagnosis offers answers again."""
    monkeypatch.setattr(stall, "paused", lambda proc: False)
    plan = launch.plan("starter", overrides={"n_ctx": 2048})
    proc = launch.start(plan)
    try:
        stream = ChatStream(proc.base_url, [{"role": "user", "content": "Tell a long story."}], proc.api_key,
                            max_tokens=3000)
        got = []
        with pytest.raises(EngineStalled) as err:
            with StallWatch(stream, proc, timeout=8.0, poll=0.5) as watch:
                for ev in stream:
                    if isinstance(ev, Delta):
                        got.append(ev.text)
                        if len(got) == 3:
                            os.kill(proc.pid, signal.SIGSTOP)
        assert watch.stalled is err.value and err.value.received_text.startswith("".join(got))
        assert err.value.seconds >= 8.0 and not err.value.paused
        d = diagnose.diagnose_exception(err.value, proc=proc, plan=plan)
        assert d.kind == "engine_stalled" and d.fixes[0].action == "relaunch"
        assert "stall_timeout_seconds" in d.explanation and d.log_tail  # the setting that says how long
        deadline = time.monotonic() + 15
        while proc.running and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not proc.running  # the watchdog stopped it
    finally:
        proc.stop()
    again = launch.start(plan)  # the fix: the same plan, started again
    try:
        text = "".join(e.text for e in ChatStream(again.base_url, [{"role": "user", "content": "Hi"}], again.api_key,
                                                  max_tokens=4) if isinstance(e, Delta))
        assert text
    finally:
        again.stop()
