"""The one place where the Qt-free core meets Qt.

:class:`ManagerBridge` turns :class:`engines.running.manager.EngineManager` listener calls
(made from worker threads) into typed Qt signals, delivered queued on the GUI
thread. :func:`run_async` runs a blocking core call (engine launch, stop, idle
unload) on a worker thread and reports back through signals, so the GUI thread
never waits on an engine.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from PySide6.QtCore import QObject, Signal

from engines.running.manager import EngineManager

log = logging.getLogger(__name__)


class ManagerBridge(QObject):
    """Engine events as Qt signals (emitted from any thread, received on the GUI thread)."""

    loading = Signal(str, object)     # model name, LaunchPlan
    ready = Signal(str, object)       # model name, manager.Running
    failed = Signal(str, object)      # model name, exception
    stopped = Signal(str, str)        # model name, reason
    unloaded = Signal(str, object)    # model name, LaunchPlan
    changed = Signal()                # any of the above: refresh lists, tray state

    def __init__(self, manager: EngineManager, parent: QObject | None = None):
        super().__init__(parent)
        self.manager = manager
        manager.subscribe(self._on_event)

    def _on_event(self, event: str, name: str, payload: object) -> None:
        signal = {"loading": self.loading, "ready": self.ready, "failed": self.failed,
                  "unloaded": self.unloaded}.get(event)
        if event == "stopped":
            self.stopped.emit(name, str(payload))
        elif signal is not None:
            signal.emit(name, payload)
        else:
            log.debug("unknown engine event %s for %s", event, name)
        self.changed.emit()


class Call(QObject):
    """One blocking call on a worker thread; ``done(result)`` or ``failed(exception)`` on the GUI thread."""

    done = Signal(object)
    failed = Signal(object)
    finished = Signal()

    _live: set["Call"] = set()  # keeps calls alive until they report

    def __init__(self, fn: Callable[[], object], name: str = "ember-call"):
        super().__init__()
        self.fn, self.name = fn, name
        self._worker: threading.Thread | None = None
        self.finished.connect(self._release)  # queued: runs on the GUI thread after done/failed

    def start(self) -> "Call":
        Call._live.add(self)
        self._worker = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._worker.start()
        return self

    def _run(self) -> None:
        try:
            result = self.fn()
        except BaseException as exc:  # reported to the GUI, never swallowed
            log.info("%s failed: %s", self.name, exc)
            self.failed.emit(exc)
        else:
            self.done.emit(result)
        finally:
            self.finished.emit()

    def _release(self) -> None:
        Call._live.discard(self)

    def wait(self, timeout: float | None = None) -> bool:
        if self._worker is not None:
            self._worker.join(timeout)
            return not self._worker.is_alive()
        return True


def run_async(fn: Callable[[], object], on_done: Callable[[object], None] | None = None,
              on_error: Callable[[BaseException], None] | None = None, name: str = "ember-call") -> Call:
    """Run ``fn()`` off the GUI thread; the callbacks run later on the GUI thread (queued)."""
    call = Call(fn, name)
    if on_done is not None:
        call.done.connect(on_done)
    if on_error is not None:
        call.failed.connect(on_error)
    return call.start()
