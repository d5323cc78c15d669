"""An "Install …" fix: the command for the engine's interpreter, with Copy, and Install to run it.

The command comes from the core (:func:`engines.running.install.command_for`); running it
goes through :func:`desktop.bridge.run_async`, its output arriving line by line on a queued
signal, with a busy bar, the last line, the whole output below and Cancel. A command Ember
leaves to the user (vLLM "in its own environment") is shown with the reason, to copy.
Once installed, "Start it" asks the caller to start the model again (:attr:`start_requested`).
"""
from __future__ import annotations

import logging
import threading

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QFont, QGuiApplication
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit,
                               QProgressBar, QPushButton, QVBoxLayout, QWidget)

from engines.running import install

from .bridge import run_async
from .widgets import apply_style, error_label, muted_label, primary_button

log = logging.getLogger(__name__)


class InstallDialog(QDialog):
    """Shows one install command; Copy puts it on the clipboard, Install runs it with progress."""

    finished_install = Signal(object)    # install.InstallOutcome
    start_requested = Signal()           # "Start it" after a successful install
    _line = Signal(str)                  # internal: a line of output, from the worker thread

    def __init__(self, cmd: install.InstallCommand, title: str, what: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.cmd = cmd
        self.outcome: install.InstallOutcome | None = None
        self._cancel: threading.Event | None = None
        self.setWindowTitle(f"Ember: {title}")
        apply_style(self)
        self.setMinimumWidth(620)
        layout = QVBoxLayout(self)
        layout.setSpacing(8)
        heading = QLabel(title)
        font = QFont(heading.font())
        font.setPointSizeF(font.pointSizeF() * 1.2)
        font.setBold(True)
        heading.setFont(font)
        layout.addWidget(heading)
        lead = f"{what} " if what else ""
        intro = (f"{lead}Install runs this command with the Python that runs the engine ({cmd.interpreter}):"
                 if cmd.runnable else f"{lead}Run this command yourself, where the engine is to run:")
        self.intro = QLabel(intro)
        self.intro.setWordWrap(True)
        layout.addWidget(self.intro)

        mono = QFont("monospace")
        mono.setStyleHint(QFont.Monospace)
        layout.addLayout(self._command_row(cmd, mono))

        self.why_not = muted_label(f"Ember does not run it itself ({cmd.why_not})." if cmd.why_not else "")
        self.why_not.setVisible(bool(cmd.why_not))
        layout.addWidget(self.why_not)

        self.bar = QProgressBar()
        self.bar.setRange(0, 0)  # pip says no fraction: a busy bar, and what it is doing
        self.bar.setTextVisible(False)
        self.bar.setAccessibleName("Installing")
        self.bar.hide()
        layout.addWidget(self.bar)
        self.doing = muted_label(wrap=False)
        self.doing.hide()
        layout.addWidget(self.doing)
        self.output = QPlainTextEdit()
        self.output.setReadOnly(True)
        self.output.setFont(mono)
        self.output.setMaximumBlockCount(2000)
        self.output.setAccessibleName("Install output")
        self.output.setMinimumHeight(140)
        self.output.hide()
        layout.addWidget(self.output)
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.hide()
        layout.addWidget(self.result_label)
        self.error = error_label()
        layout.addWidget(self.error)

        self.buttons = self._button_box(cmd)
        layout.addWidget(self.buttons)
        (self.install_button if cmd.runnable else self.copy_button).setDefault(True)
        self._line.connect(self._append, Qt.ConnectionType.QueuedConnection)

    def _command_row(self, cmd: install.InstallCommand, mono: QFont) -> QHBoxLayout:
        """The command, read-only in a monospace field, with Copy."""
        line = QHBoxLayout()
        self.command_field = QLineEdit(cmd.display)
        self.command_field.setReadOnly(True)
        self.command_field.setCursorPosition(0)
        self.command_field.setAccessibleName("Install command")
        self.command_field.setFont(mono)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setAccessibleName("Copy the install command")
        self.copy_button.clicked.connect(self.copy)
        line.addWidget(self.command_field, 1)
        line.addWidget(self.copy_button)
        return line

    def _button_box(self, cmd: install.InstallCommand) -> QDialogButtonBox:
        """Install (when Ember may run it), Start it (after), Cancel (while running), Close."""
        buttons = QDialogButtonBox()
        self.install_button = primary_button("Install")
        self.install_button.clicked.connect(self.run)
        self.start_button = primary_button("Start it")
        self.start_button.clicked.connect(self._start)
        buttons.addButton(self.install_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(self.start_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.cancel_button = buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        # after addButton, which shows what it adds
        self.install_button.setVisible(cmd.runnable)
        self.start_button.hide()
        self.cancel_button.hide()
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.close_button.clicked.connect(self.reject)
        return buttons

    # -- actions ---------------------------------------------------------------------------
    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.cmd.display)
        self.copy_button.setText("Copied")

    @property
    def running(self) -> bool:
        return self._cancel is not None

    def run(self) -> None:
        """Run the command off the GUI thread: the busy bar, each output line, Cancel."""
        if not self.cmd.runnable or self.running:
            return
        self._cancel = threading.Event()
        cancel = self._cancel
        self.output.clear()
        for w in (self.bar, self.doing, self.output, self.cancel_button):
            w.show()
        self.doing.setText("Starting pip\u2026")
        self.result_label.hide()
        self.error.hide()
        self.install_button.setEnabled(False)
        self.close_button.setEnabled(False)
        run_async(lambda: install.run(self.cmd, self._line.emit, cancel), self._done, self._failed,
                  name="install", owner=self)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.doing.setText("Cancelling\u2026")

    def reject(self) -> None:
        if self.running:  # Esc or the window's close while pip runs: cancel, the dialog stays to say so
            self.cancel()
            return
        super().reject()

    def _start(self) -> None:
        self.start_requested.emit()
        self.accept()

    # -- results (GUI thread) ---------------------------------------------------------------
    @Slot(str)
    def _append(self, line: str) -> None:
        self.output.appendPlainText(line)
        if line.strip():
            self.doing.setText(line.strip()[:120])

    def _done(self, outcome: install.InstallOutcome) -> None:
        self._cancel = None
        self.outcome = outcome
        for w in (self.bar, self.doing, self.cancel_button):
            w.hide()
        self.close_button.setEnabled(True)
        self.result_label.setText(outcome.sentence if outcome.ok else
                                  f"{outcome.sentence} The output above says why.")
        self.result_label.show()
        self.install_button.setEnabled(True)
        self.install_button.setText("Install again" if not outcome.ok else "Install")
        self.install_button.setVisible(not outcome.ok)
        self.start_button.setVisible(outcome.ok)
        if outcome.ok:
            self.start_button.setDefault(True)
            self.start_button.setFocus()
        self.finished_install.emit(outcome)

    def _failed(self, exc: BaseException) -> None:
        self._cancel = None
        for w in (self.bar, self.doing, self.cancel_button):
            w.hide()
        self.close_button.setEnabled(True)
        self.install_button.setEnabled(True)
        self.error.setText(f"The command could not be run: {exc}")
        self.error.show()
