"""Noticing an engine that went silent mid-reply, so a chat does not wait in silence for minutes.

Silence alone is not a stall: reading a long prompt takes minutes on a slow
machine, but llama.cpp logs its progress meanwhile. So the watch counts the time
since anything came from the engine, a streamed chunk or a new log line; past the
``stall_timeout_seconds`` setting it is a stall. A paused process (SIGSTOP, a
debugger) cannot be doing anything: that is a stall after :data:`PAUSED_GRACE`.
On a stall the stream is broken off with :class:`~engines.chat.client.EngineStalled`
(the diagnosis explains it) and the engine is stopped so it does not hold the memory.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import psutil

from engines import settings
from engines.chat.client import ChatStream, EngineStalled
from engines.running.supervisor import EngineProcess

log = logging.getLogger(__name__)

#: Seconds of silence from a paused engine before it counts as stalled.
PAUSED_GRACE = 5.0
DEFAULT_TIMEOUT = 300.0


def timeout_setting() -> float:
    """``stall_timeout_seconds`` (settings.json): how long an engine may be silent mid-reply."""
    try:
        value = float(settings.get("stall_timeout_seconds") or DEFAULT_TIMEOUT)
    except (TypeError, ValueError):
        value = DEFAULT_TIMEOUT
    return max(10.0, value)


def paused(proc: EngineProcess) -> bool:
    """Whether the engine's process (or a child of it: the real server under Ember's worker) is stopped."""
    try:
        root = psutil.Process(proc.pid)
        return any(p.status() == psutil.STATUS_STOPPED for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return False


def _resume(proc: EngineProcess) -> None:
    try:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            p.resume()
    except psutil.Error:
        pass


class StallWatch:
    """Watches one stream from one engine until :meth:`stop`; ``stalled`` says whether it broke it off."""

    def __init__(self, stream: ChatStream, proc: EngineProcess, timeout: float | None = None,
                 on_stall: Callable[[], None] | None = None, poll: float = 1.0):
        self.stream, self.proc = stream, proc
        self.timeout = timeout if timeout is not None else timeout_setting()
        self.on_stall = on_stall or proc.stop
        self.poll = poll
        self.stalled: EngineStalled | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stall-watch-{proc.model}", daemon=True)

    def __enter__(self) -> "StallWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._done.set()

    def _run(self) -> None:
        log_size, log_changed = self.proc.log_size(), time.monotonic()
        while not self._done.wait(self.poll):
            now = time.monotonic()
            size = self.proc.log_size()
            if size != log_size:
                log_size, log_changed = size, now
            silent = now - max(self.stream.last_activity, log_changed)
            is_paused = silent >= PAUSED_GRACE and paused(self.proc)
            if silent < self.timeout and not is_paused:
                continue
            self.stalled = EngineStalled(silent, is_paused, self.timeout)
            log.info("%s stalled: %s; stopping it", self.proc.model, self.stalled)
            self.stream.break_off(self.stalled)
            if is_paused:
                _resume(self.proc)  # a stopped process cannot take SIGTERM: let it, so it stops cleanly
            try:
                self.on_stall()
            except Exception:
                log.exception("stopping the stalled engine failed")
            return
