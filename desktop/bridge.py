"""The one place where the Qt-free core meets Qt.

:class:`ManagerBridge` turns the core's listener calls, made from worker threads
(engine events from :class:`engines.running.manager.EngineManager`, job changes
from :class:`engines.models.downloads.DownloadManager`), into typed Qt signals
emitted on the GUI thread. :func:`run_async` runs a blocking core call (engine
launch, stop, hardware detection, a plan estimate) on a worker thread and hands
its result back on the GUI thread, so the GUI thread never waits on the core.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Callable

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot

from engines.cluster.xinference import LaunchState
from engines.models.downloads import DownloadManager, Job
from engines.running.launch import LaunchPlan
from engines.running.manager import (EngineEvent, EngineFailed, EngineLoading, EngineManager, EngineReady,
                                     EngineStopped, EngineUnloaded, Running)

log = logging.getLogger(__name__)


class ManagerBridge(QObject):
    """Engine and download events as Qt signals, always emitted on the GUI thread.

    The core calls the listeners on its own threads; they only pass the event to
    a queued internal signal, so every public signal below is emitted on the
    thread the bridge lives in and its receivers need no locking.
    """

    loading = Signal(str, LaunchPlan)     # model name, the plan being started
    ready = Signal(str, Running)          # model name, the running engine
    failed = Signal(str, Exception)       # model name, why (the core's exception)
    stopped = Signal(str, str)            # model name, reason ("stopped", "quit")
    unloaded = Signal(str, LaunchPlan)    # model name, the plan kept for relaunch
    changed = Signal()                    # after any engine event: refresh lists, tray state
    download_changed = Signal(str)        # a download job's name; read it with DownloadManager.job(name)

    _engine_event = Signal(EngineEvent)   # internal: from the core's threads to the GUI thread
    _download_event = Signal(str)

    def __init__(self, manager: EngineManager | None = None, parent: QObject | None = None,
                 downloads: DownloadManager | None = None):
        super().__init__(parent)
        self.manager = manager
        self.downloads = downloads
        self._alive = True  # False once the Qt object is gone: the listeners then do nothing
        self._engine_event.connect(self._deliver_engine_event, Qt.QueuedConnection)
        self._download_event.connect(self.download_changed, Qt.QueuedConnection)
        if manager is not None:
            manager.subscribe(self._on_engine_event)
        if downloads is not None:
            downloads.subscribe(self._on_download)

    # -- the core's threads -----------------------------------------------------------
    def _on_engine_event(self, event: EngineEvent) -> None:
        if self._forward(self._engine_event, event) is False and self.manager is not None:
            self.manager.unsubscribe(self._on_engine_event)

    def _on_download(self, job: Job) -> None:
        self._forward(self._download_event, job.name)

    def _forward(self, signal, value) -> bool:
        """Queue ``value`` for the GUI thread; False when the bridge's Qt object is deleted."""
        if not self._alive:
            return False
        try:
            signal.emit(value)
        except RuntimeError:  # the window that owned the bridge is gone
            self._alive = False
        return self._alive

    # -- the GUI thread ------------------------------------------------------------------
    @Slot(EngineEvent)
    def _deliver_engine_event(self, event: EngineEvent) -> None:
        if isinstance(event, EngineLoading):
            self.loading.emit(event.name, event.plan)
        elif isinstance(event, EngineReady):
            self.ready.emit(event.name, event.running)
        elif isinstance(event, EngineFailed):
            self.failed.emit(event.name, event.error)
        elif isinstance(event, EngineStopped):
            self.stopped.emit(event.name, event.reason)
        elif isinstance(event, EngineUnloaded):
            self.unloaded.emit(event.name, event.plan)
        else:
            log.debug("unknown engine event %r", event)
        self.changed.emit()


class LaunchProgress(QObject):
    """A cluster launch's progress, reported by the worker thread that waits for it (:meth:`report`,
    any thread) and delivered as :attr:`changed` on the GUI thread."""

    changed = Signal(str, float, str)    # uid, 0..1 (-1.0: not told), what the cluster says it does
    _state = Signal(LaunchState)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._state.connect(self._deliver, Qt.QueuedConnection)

    def report(self, state: LaunchState) -> None:
        try:
            self._state.emit(state)
        except RuntimeError:  # the view that owned it is gone
            pass

    @Slot(LaunchState)
    def _deliver(self, state: LaunchState) -> None:
        self.changed.emit(state.uid, -1.0 if state.progress is None else float(state.progress),
                          state.stage or state.status.capitalize())


# -- off the GUI thread ---------------------------------------------------------------------

class Call(QObject):
    """One blocking call on its own worker thread; its result is delivered on the GUI thread.

    ``done`` and ``failed`` are connected to this object's own slots, so Qt queues
    them onto the thread the call was made on. With an ``owner`` the call is the
    owner's child: once the owner is deleted, nothing is delivered.
    """

    done = Signal(object)
    failed = Signal(BaseException)

    _live: set["Call"] = set()        # calls without an owner, kept alive until they report
    _workers: set[threading.Thread] = set()
    _workers_lock = threading.Lock()

    def __init__(self, fn: Callable[[], object], on_done: Callable[[object], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None, name: str = "ember-call",
                 owner: QObject | None = None):
        super().__init__(owner)
        self.fn, self.name = fn, name
        self._on_done, self._on_error = on_done, on_error
        self._owned = owner is not None
        self._worker: threading.Thread | None = None
        self.done.connect(self._deliver_done)
        self.failed.connect(self._deliver_failed)

    def start(self) -> "Call":
        if not self._owned:
            Call._live.add(self)
        self._worker = threading.Thread(target=self._run, name=self.name, daemon=True)
        with Call._workers_lock:
            Call._workers.add(self._worker)
        self._worker.start()
        return self

    def _run(self) -> None:
        try:
            try:
                result = self.fn()
            except BaseException as exc:  # every failure reaches the GUI, never swallowed here
                log.info("%s failed: %s: %s", self.name, type(exc).__name__, exc)
                self._emit(self.failed, exc)
            else:
                self._emit(self.done, result)
        finally:
            with Call._workers_lock:
                Call._workers.discard(threading.current_thread())

    def _emit(self, signal, value) -> None:
        try:
            signal.emit(value)
        except RuntimeError:  # the owner (and with it this call) is deleted: nothing to deliver
            Call._live.discard(self)

    @Slot(object)
    def _deliver_done(self, value: object) -> None:
        try:
            if self._on_done is not None:
                self._on_done(value)
        finally:
            self._release()

    @Slot(BaseException)
    def _deliver_failed(self, exc: BaseException) -> None:
        try:
            if self._on_error is not None:
                self._on_error(exc)
            else:
                log.warning("%s failed: %s: %s", self.name, type(exc).__name__, exc)
        finally:
            self._release()

    def _release(self) -> None:
        Call._live.discard(self)
        self.deleteLater()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread (not the delivery); True when it has ended."""
        if self._worker is not None:
            self._worker.join(timeout)
            return not self._worker.is_alive()
        return True


def run_async(fn: Callable[[], object], on_done: Callable[[object], None] | None = None,
              on_error: Callable[[BaseException], None] | None = None, name: str = "ember-call",
              *, owner: QObject | None = None) -> Call:
    """Run ``fn()`` on a worker thread named ``name``; the callbacks run later on the GUI thread.

    ``on_error`` gets whatever ``fn`` raised (logged when there is none). With
    ``owner`` (a widget), nothing is delivered once the owner is deleted.
    """
    return Call(fn, on_done, on_error, name, owner).start()


def wait_for_calls(timeout: float) -> bool:
    """Wait until every :func:`run_async` worker has ended (tests, shutdown); True if all did."""
    deadline = time.monotonic() + timeout
    while True:
        with Call._workers_lock:
            workers = list(Call._workers)
        if not workers:
            return True
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if time.monotonic() >= deadline:
            with Call._workers_lock:
                return not Call._workers


class GuiThreadCollector(QObject):
    """Python's cycle collector, run on the GUI thread only.

    Left to itself, the collector runs in whichever thread happens to allocate (a worker
    reading a model header, say) and may destroy Qt objects caught in a reference cycle
    there, off the thread that owns them: a crash (seen in the desktop suite as a
    segfault inside a run_async worker). Automatic collection is turned off and this
    timer collects on the GUI thread, by the same generation thresholds Python uses.
    """

    def __init__(self, parent: QObject | None = None, interval_ms: int = 500):
        super().__init__(parent)
        self._timer = QTimer(self, interval=interval_ms)
        self._timer.timeout.connect(self.collect)

    def start(self) -> "GuiThreadCollector":
        gc.disable()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.stop()
        gc.enable()

    @Slot()
    def collect(self) -> None:
        """Collect the generations whose allocation count passed Python's threshold."""
        counts, thresholds = gc.get_count(), gc.get_threshold()
        generation = -1
        for gen in range(3):
            if counts[gen] > thresholds[gen]:
                generation = gen
        if generation >= 0:
            gc.collect(generation)
