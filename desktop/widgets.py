"""Small widgets shared by Ember's windows: the fit badge in words, the accent button,
muted and error labels, the one style sheet behind them, and "Open folder" that
shows the path with Copy when no file manager can open it (:func:`open_folder`).

Sizes are written with :mod:`engines.units`; work off the GUI thread goes through
:func:`desktop.bridge.run_async`."""
from __future__ import annotations

import logging

from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QToolButton, QWidget

log = logging.getLogger(__name__)

ACCENT = "#E8590C"          # ember orange: the primary action and the "fits" badge
ACCENT_TEXT = "#FFFFFF"
ERROR = "#C92A2A"

FIT_ORDER = {"gpu": 0, "partial": 1, "cpu": 2, "unknown": 3, "none": 4, "unavailable": 5}


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


def text_label(text: str = "", parent: QWidget | None = None, wrap: bool = True) -> QLabel:
    """Text people may want to copy (paths, reasons): wrapped and selectable with the mouse."""
    lab = QLabel(text, parent)
    lab.setWordWrap(wrap)
    lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
    return lab


def muted_label(text: str = "", parent: QWidget | None = None, wrap: bool = True) -> QLabel:
    """Secondary text (the numbers below the words), in the palette's placeholder colour."""
    lab = text_label(text, parent, wrap)
    lab.setProperty("ember", "muted")
    return lab


def error_label(parent: QWidget | None = None) -> QLabel:
    lab = QLabel(parent)
    lab.setWordWrap(True)
    lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
    lab.setProperty("ember", "error")
    lab.hide()
    return lab


class PathNote(QFrame):
    """Where a folder is, selectable, with Copy: what "Open folder" shows when no file manager opens it."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFrameShape(QFrame.StyledPanel)
        self.path = ""
        line = QHBoxLayout(self)
        line.setContentsMargins(8, 4, 4, 4)
        self.label = text_label()
        self.copy_button = QPushButton("Copy path")
        self.copy_button.setAccessibleName("Copy the folder's path")
        self.copy_button.clicked.connect(self.copy)
        self.close_button = QToolButton()
        self.close_button.setText("\u2715")
        self.close_button.setAccessibleName("Dismiss this message")
        self.close_button.clicked.connect(self.hide)
        line.addWidget(self.label, 1)
        line.addWidget(self.copy_button)
        line.addWidget(self.close_button, 0, Qt.AlignTop)
        self.hide()

    def show_path(self, path: str) -> None:
        self.path = path
        self.label.setText(f"No file manager could open the folder. It is here:\n{path}")
        self.copy_button.setText("Copy path")
        self.show()

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.path)
        self.copy_button.setText("Copied")
        QTimer.singleShot(2000, self, lambda: self.copy_button.setText("Copy path"))


def open_folder(path: str | Path, note: PathNote) -> bool:
    """Open a folder in the file manager; when none can (``openUrl`` says False), ``note`` shows the path."""
    opened = QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
    if opened:
        note.hide()
    else:
        log.info("no file manager opened %s; showing the path instead", path)
        note.show_path(str(path))
    return opened
