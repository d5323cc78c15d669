"""The engines Ember is running right now, shared by the tray, the chat window and the CLI.

Qt-free and thread-safe: the desktop calls :meth:`EngineManager.launch` from a
worker thread and learns about changes through the listener callbacks (the
desktop's bridge turns them into Qt signals). Idle unload lives here too: a
model unused for ``idle_timeout`` seconds is stopped and remembered, and
:meth:`ensure_running` relaunches it with the same plan when needed. An engine
that dies by itself (crash, out-of-memory killer, ``kill -9``) is noticed at
once by its watcher thread: it leaves :meth:`running`, is kept in
:meth:`crashed` with its plan (and :meth:`get` still returns it, dead, for
the diagnosis of the reply it broke), and listeners get :class:`EngineCrashed`.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import psutil

from engines.chat import remotes
from engines.chat.endpoint import Endpoint
from engines import units
from engines.running import launch
from engines.running import supervisor

log = logging.getLogger(__name__)

@dataclass
class Running:
    plan: launch.LaunchPlan
    proc: supervisor.EngineProcess
    last_used: float = field(default_factory=time.monotonic)
    in_use: int = 0  # requests streaming through it now: never unloaded under them

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.plan.model.name, self.proc.base_url, self.proc.api_key, "local",
                        None, self.plan.engine)


@dataclass(frozen=True)
class EngineEvent:
    """Something that happened to one model's engine; listeners get one of the subclasses below."""

    name: str  # the model's name


@dataclass(frozen=True)
class EngineLoading(EngineEvent):
    plan: launch.LaunchPlan


@dataclass(frozen=True)
class EngineReady(EngineEvent):
    running: Running


@dataclass(frozen=True)
class EngineFailed(EngineEvent):
    error: BaseException  # what launch raised (also re-raised to the caller)


@dataclass(frozen=True)
class EngineCrashed(EngineFailed):
    """A ready engine's process ended by itself; ``error`` is a :class:`supervisor.EngineExited`
    (its ``reason`` is "was killed by SIGKILL", "exited with status 1"...)."""

    running: Running  # the engine as it was: its plan (ensure_running relaunches with it), its log

    @property
    def plan(self) -> launch.LaunchPlan:
        return self.running.plan

    @property
    def log_path(self) -> str:
        return str(self.running.proc.log_path)


@dataclass(frozen=True)
class EngineStopped(EngineEvent):
    reason: str  # "stopped", "quit"


@dataclass(frozen=True)
class EngineUnloaded(EngineEvent):
    plan: launch.LaunchPlan  # kept: ensure_running relaunches with it


Listener = Callable[[EngineEvent], None]


@dataclass
class DoesNotFit(RuntimeError):
    """A model that needs more memory than this computer has free even with every other model
    unloaded (the gateway's "model too large"); the numbers are what the fit estimate said."""

    name: str
    needed_bytes: int
    free_bytes: int

    def __str__(self) -> str:
        return (f"{self.name} needs about {units.size(self.needed_bytes)} of memory; "
                f"{units.size(self.free_bytes)} is free with no other model loaded")


def memory_needed(plan: launch.LaunchPlan) -> int | None:
    """The RAM the plan's engine would take beside what goes to the GPU; None when unknown."""
    fit = plan.fit
    if fit is None or not fit.total_bytes:
        return None
    return max(0, fit.total_bytes - fit.vram_bytes)


class EngineManager:
    def __init__(self, idle_timeout: float | None = 30 * 60, max_loaded: int | None = None):
        self.idle_timeout = idle_timeout  # seconds; None = never unload
        self.max_loaded = max_loaded      # models loaded at once by :meth:`serve`; None = as memory allows
        self._gates: dict[str, threading.Lock] = {}
        self._closed = False  # quitting: nothing starts any more (a request arriving late, say)
        self._running: dict[str, Running] = {}
        self._unloaded: dict[str, launch.LaunchPlan] = {}
        self._loading: dict[str, threading.Event] = {}
        self._crashed: dict[str, EngineCrashed] = {}
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []

    # -- events -------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every :class:`EngineEvent`, on the thread it happens on."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _emit(self, event: EngineEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("listener failed for %s", event)

    # -- state --------------------------------------------------------------------
    def running(self) -> list[Running]:
        with self._lock:
            return list(self._running.values())

    def get(self, name: str) -> Running | None:
        """The running engine for ``name``; else the one that crashed (``proc.running`` is False: what
        diagnoses the failure its reply met), until it is relaunched or dismissed with :meth:`stop`."""
        with self._lock:
            run = self._running.get(name)
            crash = self._crashed.get(name)
        return run if run is not None else crash.running if crash is not None else None

    def unloaded(self) -> dict[str, launch.LaunchPlan]:
        with self._lock:
            return dict(self._unloaded)

    def crashed(self) -> dict[str, EngineCrashed]:
        """Models whose engine died by itself since their last launch or stop, with why."""
        with self._lock:
            return dict(self._crashed)

    def loading(self) -> list[str]:
        """Names of the models being started right now."""
        with self._lock:
            return list(self._loading)

    def is_loading(self, name: str) -> bool:
        with self._lock:
            return name in self._loading

    def endpoints(self) -> list[Endpoint]:
        """Local engines (running or idle-unloaded) and configured remote endpoints."""
        with self._lock:
            eps = [r.endpoint for r in self._running.values()]
            eps += [Endpoint(n, "", None, "unloaded", None, p.engine) for n, p in self._unloaded.items()]
        return eps + remotes.endpoints()

    # -- launch / stop ------------------------------------------------------------
    def launch(self, plan: launch.LaunchPlan, timeout: float = 300.0) -> Running:
        """Start (or restart with a new plan) a model; blocks until ready. Raises on failure."""
        name = plan.model.name
        cancel = threading.Event()
        with self._lock:
            if self._closed:
                raise supervisor.EngineStartError("Ember is quitting; the engine was not started.", None, [],
                                                  supervisor.launch_log_path(name, plan.engine))
            old = self._running.pop(name, None)
            self._unloaded.pop(name, None)
            self._crashed.pop(name, None)
            self._loading[name] = cancel
        if old:
            old.proc.stop()
        self._emit(EngineLoading(name, plan))
        try:
            proc = launch.start(plan, timeout=timeout, cancel=cancel)
        except BaseException as exc:
            with self._lock:
                self._loading.pop(name, None)
            self._emit(EngineFailed(name, exc))
            raise
        run = Running(plan, proc)
        with self._lock:
            self._loading.pop(name, None)
            self._running[name] = run
        self._emit(EngineReady(name, run))
        proc.watch(lambda exited: self._exited(run, exited))
        return run

    def _exited(self, run: Running, exited: supervisor.EngineExited) -> None:
        """The watcher thread: ``run``'s engine ended by itself. Forget it, remember why, tell listeners."""
        name = run.plan.model.name
        event = EngineCrashed(name, exited, run)
        with self._lock:
            if self._running.get(name) is not run:
                return  # already stopped, unloaded or replaced
            self._running.pop(name)
            self._crashed[name] = event
        run.proc.stop()  # nothing to stop any more: closes our end of its log
        self._emit(event)

    def cancel_loading(self, name: str) -> None:
        with self._lock:
            ev = self._loading.get(name)
        if ev:
            ev.set()

    def stop(self, name: str, reason: str = "stopped") -> supervisor.Stop:
        with self._lock:
            run = self._running.pop(name, None)
            self._unloaded.pop(name, None)
            crash = self._crashed.pop(name, None)
        if run is None:
            if crash is not None:  # the user dismissed a crashed engine: windows forget it too
                self._emit(EngineStopped(name, reason))
            return supervisor.Stop.NOT_RUNNING
        result = run.proc.stop()
        self._emit(EngineStopped(name, reason))
        return result

    def stop_all(self) -> None:
        """Stop every engine at once (app quit): each gets its SIGTERM now, not after the previous
        one's grace period, and loading ones are cancelled."""
        for name in self.loading():
            self.cancel_loading(name)
        names = [r.plan.model.name for r in self.running()]
        threads = [threading.Thread(target=self.stop, args=(n, "quit"), name=f"stop-{n}") for n in names[1:]]
        for t in threads:
            t.start()
        if names:
            self.stop(names[0], "quit")
        for t in threads:
            t.join()  # each stop is bounded: SIGTERM, a grace period, SIGKILL

    def shutdown(self) -> None:
        """Quit: stop every engine, and start none from now on."""
        with self._lock:
            self._closed = True
        self.stop_all()

    def touch(self, name: str) -> None:
        with self._lock:
            run = self._running.get(name)
            if run:
                run.last_used = time.monotonic()

    def ensure_running(self, name: str, timeout: float = 300.0) -> Running:
        """The running engine for ``name``, relaunching it if it was unloaded for idleness or crashed."""
        with self._lock:
            run = self._running.get(name)
            plan = self._unloaded.get(name)
            crash = self._crashed.get(name)
        if plan is None and crash is not None:
            plan = crash.plan
        if run is not None and run.proc.running:
            self.touch(name)
            return run
        if run is not None:  # it died: forget it, the caller diagnoses
            with self._lock:
                self._running.pop(name, None)
            plan = run.plan
        if plan is None:
            raise KeyError(name)
        return self.launch(plan, timeout)

    # -- on demand (the gateway) --------------------------------------------------
    def serve(self, name: str, make_plan: Callable[[], launch.LaunchPlan], timeout: float = 300.0) -> Running:
        """The running engine for ``name``, started on demand: one start however many callers ask at
        once (a start already under way, the desktop's included, is waited for), after making room
        (:meth:`make_room`). Raises what :meth:`launch` raises, or :class:`DoesNotFit`."""
        with self._lock:
            gate = self._gates.setdefault(name, threading.Lock())
        with gate:
            deadline = time.monotonic() + timeout
            while self.is_loading(name) and time.monotonic() < deadline:
                time.sleep(0.05)  # someone else (the chat window) is starting it: take theirs
            with self._lock:
                run = self._running.get(name)
                plan = self._unloaded.get(name) or (self._crashed[name].plan if name in self._crashed else None)
            if run is not None and run.proc.running:
                self.touch(name)
                return run
            if run is not None:  # died a moment ago, before its watcher said so: start it as it was
                plan = plan or run.plan
            plan = self.make_room(name, lambda: plan or make_plan())
            return self.launch(plan, timeout)

    def make_room(self, name: str, make_plan: Callable[[], launch.LaunchPlan]) -> launch.LaunchPlan:
        """Unload the least recently used models until ``name`` fits beside the rest (memory free
        now, and :attr:`max_loaded`); the plan is made again after each unload, since auto-NGL
        sees the memory that came free. Raises :class:`DoesNotFit` when nothing is left to unload."""
        while True:
            plan = make_plan()
            others = sorted((r for r in self.running() if r.plan.model.name != name and not r.in_use),
                            key=lambda r: r.last_used)
            needed = memory_needed(plan)
            free = psutil.virtual_memory().available
            too_many = self.max_loaded is not None and len(self.running()) >= self.max_loaded
            short = needed is not None and needed > free
            if not (too_many or short):
                return plan
            if not others:
                if short:
                    raise DoesNotFit(name, needed, free)
                return plan  # over max_loaded only with models in use: they finish first
            victim = others[0]
            log.info("unloading %s (least recently used) to make room for %s", victim.plan.model.name, name)
            self.unload(victim.plan.model.name)

    def unload(self, name: str) -> bool:
        """Stop ``name`` but remember its plan (as idle unload does): it starts again when asked for."""
        with self._lock:
            run = self._running.get(name)
            if run is None:
                return False
            self._running.pop(name)
            self._unloaded[name] = run.plan
        run.proc.stop()
        self._emit(EngineUnloaded(name, run.plan))
        return True

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[None]:
        """Mark ``name`` busy while a request streams through it: idle unload and eviction skip it."""
        with self._lock:
            run = self._running.get(name)
            if run is not None:
                run.in_use += 1
        try:
            yield
        finally:
            with self._lock:
                if run is not None:
                    run.in_use -= 1
            self.touch(name)

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Stop models unused for longer than ``idle_timeout``; returns their names."""
        if self.idle_timeout is None:
            return []
        now = time.monotonic() if now is None else now
        victims = [r for r in self.running() if now - r.last_used >= self.idle_timeout and not r.in_use]
        for r in victims:
            name = r.plan.model.name
            with self._lock:
                if self._running.get(name) is not r:
                    continue
            log.info("unloading %s after %.0f s idle", name, now - r.last_used)
            self.unload(name)
        return [r.plan.model.name for r in victims]
