"""Small widgets and helpers shared by Ember's windows: the fit badge, byte sizes,
and running a function off the GUI thread with its result delivered back on it."""
from __future__ import annotations

import logging
from typing import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Qt, Signal, Slot
from PySide6.QtWidgets import QLabel, QPushButton, QSizePolicy, QWidget

log = logging.getLogger(__name__)

ACCENT = "#E8590C"          # ember orange: the primary action and the "fits" badge
ACCENT_TEXT = "#FFFFFF"
ERROR = "#C92A2A"

FIT_ORDER = {"gpu": 0, "partial": 1, "cpu": 2, "unknown": 3, "none": 4, "unavailable": 5}


def human_bytes(n: int | float | None) -> str:
    if not n:
        return "size unknown"
    n = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit in ("bytes", "KB", "MB") else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def human_gib(n: int | float) -> str:
    return f"{n / 1024 ** 3:,.1f} GiB"


def fit_words(row: dict) -> str:
    """The first line a user reads about whether a model runs here."""
    fit = row.get("fit")
    if fit == "gpu":
        return "Fits on your GPU"
    if fit == "partial":
        return f"Partly on GPU: {row.get('gpu_layers', 0)} of {row.get('total_layers', 0)} layers"
    if fit == "cpu":
        return "Runs on the CPU only, slower"
    if fit == "none":
        return "Does not fit in memory"
    if fit == "unknown":
        return "Fit unknown"
    reasons = row.get("reasons") or {}
    if row.get("install_command") or any("not installed" in str(r) for r in reasons.values()):
        return "Engine not installed"
    return "No engine for it here"


#: One style sheet for Ember's own roles, matched by dynamic properties, so a window of
#: hundreds of rows parses it once (a style sheet per widget costs ~0.5 ms each).
#: Windows apply it with :func:`apply_style`; the app may also add it to QApplication.
STYLE = f"""
QLabel[ember="muted"] {{ color: palette(placeholder-text); }}
QLabel[ember="error"] {{ color: {ERROR}; }}
QLabel[ember="running"] {{ color: {ACCENT}; font-weight: 600; }}
QLabel[fit] {{ border-radius: 4px; padding: 2px 8px; font-weight: 600; border: 1px solid palette(mid); }}
QLabel[fit="gpu"] {{ background: {ACCENT}; color: {ACCENT_TEXT}; border: 1px solid {ACCENT}; }}
QLabel[fit="partial"], QLabel[fit="cpu"] {{ border: 1px solid {ACCENT}; }}
QPushButton[ember="primary"] {{ background: {ACCENT}; color: {ACCENT_TEXT}; border: 1px solid {ACCENT};
    border-radius: 4px; padding: 4px 14px; font-weight: 600; }}
QPushButton[ember="primary"]:hover {{ background: #D9480F; }}
QPushButton[ember="primary"]:focus {{ border: 2px solid palette(highlight); }}
QPushButton[ember="primary"]:disabled {{ background: palette(button); color: palette(mid);
    border: 1px solid palette(mid); }}
"""


def apply_style(target) -> None:
    """Give a window (or the whole QApplication) Ember's few styled roles: accent button, fit badges,
    muted and error text. Appends to a style sheet already there."""
    current = target.styleSheet() or ""
    if STYLE not in current:
        target.setStyleSheet(current + STYLE)


def _repolish(w: QWidget) -> None:
    w.style().unpolish(w)
    w.style().polish(w)


class FitBadge(QLabel):
    """The fit state in words ("Fits on your GPU"), coloured by state."""

    def __init__(self, row: dict | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Maximum, QSizePolicy.Fixed)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.fit = None
        if row is not None:
            self.set_row(row)

    def set_row(self, row: dict) -> None:
        changed = self.fit is not None and self.fit != row.get("fit")
        self.fit = row.get("fit")
        self.setProperty("fit", self.fit or "unknown")
        self.setText(fit_words(row))
        self.setAccessibleName(f"Fit: {self.text()}")
        if changed:
            _repolish(self)


def primary_button(text: str, parent: QWidget | None = None) -> QPushButton:
    """The one accent-coloured button of a place (Launch); needs :data:`STYLE` on its window."""
    b = QPushButton(text, parent)
    b.setProperty("ember", "primary")
    return b


def muted_label(text: str = "", parent: QWidget | None = None, wrap: bool = True) -> QLabel:
    """Secondary text (the numbers below the words), in the palette's placeholder colour."""
    lab = QLabel(text, parent)
    lab.setWordWrap(wrap)
    lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
    lab.setProperty("ember", "muted")
    return lab


def error_label(parent: QWidget | None = None) -> QLabel:
    lab = QLabel(parent)
    lab.setWordWrap(True)
    lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
    lab.setProperty("ember", "error")
    lab.hide()
    return lab


# -- off the GUI thread ---------------------------------------------------------------

class Task(QObject):
    """Carries one background job's result back to the GUI thread.

    The signals connect to this object's own slots, so Qt queues them onto the
    thread the task lives in (the GUI thread), whichever thread emits.
    """

    done = Signal(object)
    failed = Signal(object)

    def __init__(self, owner: QObject, on_done, on_failed):
        super().__init__(owner)
        self._on_done_cb, self._on_failed_cb = on_done, on_failed
        self.done.connect(self._deliver_done)
        self.failed.connect(self._deliver_failed)

    @Slot(object)
    def _deliver_done(self, value) -> None:
        try:
            self._on_done_cb(value)
        finally:
            self.deleteLater()

    @Slot(object)
    def _deliver_failed(self, exc) -> None:
        try:
            if self._on_failed_cb is not None:
                self._on_failed_cb(exc)
            else:
                log.warning("background job failed: %s: %s", type(exc).__name__, exc)
        finally:
            self.deleteLater()


class _Runnable(QRunnable):
    def __init__(self, task: Task, fn: Callable[[], object]):
        super().__init__()
        self.task, self.fn = task, fn

    def run(self) -> None:
        try:
            result = self.fn()
        except BaseException as exc:  # every failure reaches the UI
            log.info("background job failed: %s: %s", type(exc).__name__, exc)
            self._emit(self.task.failed, exc)
        else:
            self._emit(self.task.done, result)
        self.task = None

    @staticmethod
    def _emit(signal, value) -> None:
        try:
            signal.emit(value)
        except RuntimeError:  # the window that asked is gone
            pass


def run_in_pool(owner: QObject, fn: Callable[[], object], on_done: Callable[[object], None],
                on_failed: Callable[[BaseException], None] | None = None,
                pool: QThreadPool | None = None) -> Task:
    """Run ``fn`` on a worker thread; ``on_done``/``on_failed`` run on the GUI thread.

    The task is a child of ``owner``: once the owner is deleted, nothing is delivered.
    """
    task = Task(owner, on_done, on_failed)
    (pool or QThreadPool.globalInstance()).start(_Runnable(task, fn))
    return task
