"""A read-only view of one engine launch's log that follows the file as it grows."""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QFontDatabase, QTextCursor
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from .folder import FolderDialog, open_folder

log = logging.getLogger(__name__)

MAX_INITIAL = 512 * 1024  # show at most the last 512 KiB when opening a big log


class LogViewer(QDialog):
    def __init__(self, path: Path | str, parent: QWidget | None = None, poll_ms: int = 500):
        super().__init__(parent)
        self.path = Path(path)
        self._offset = 0
        self.setWindowTitle(f"Log: {self.path.name}")
        self.resize(820, 520)
        layout = QVBoxLayout(self)
        where = QLabel(str(self.path))
        where.setTextInteractionFlags(where.textInteractionFlags() | where.textInteractionFlags().TextSelectableByMouse)
        layout.addWidget(where)
        self.text = QPlainTextEdit(readOnly=True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.text.setMaximumBlockCount(20000)
        self.text.setAccessibleName("Engine log")
        layout.addWidget(self.text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.folder_button = QPushButton("Open folder")
        self.folder_button.clicked.connect(self.open_folder)
        buttons.addButton(self.folder_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.close)
        layout.addWidget(buttons)
        self.timer = QTimer(self, interval=poll_ms)
        self.timer.timeout.connect(self.poll)
        self.timer.start()
        self.poll()

    def open_folder(self) -> FolderDialog | None:
        """The log's folder in the file manager, or its path to copy where there is none."""
        return open_folder(self.path.parent, "Log folder", self)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        """Opened at the end of the log: the newest lines are what the user came for."""
        super().showEvent(event)
        QTimer.singleShot(0, self.scroll_to_end)

    def scroll_to_end(self) -> None:
        bar = self.text.verticalScrollBar()
        bar.setValue(bar.maximum())

    def poll(self) -> None:
        """Append what was written since the last poll (a log that shrank is re-read)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            if not self.text.toPlainText():
                self.text.setPlainText(f"(the log file {self.path} does not exist yet)")
            return
        if size < self._offset:
            self._offset = 0
            self.text.clear()
        if size == self._offset:
            return
        if self._offset == 0 and size > MAX_INITIAL:
            self._offset = size - MAX_INITIAL
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        at_end = self.text.verticalScrollBar().value() >= self.text.verticalScrollBar().maximum() - 2
        self.text.moveCursor(QTextCursor.MoveOperation.End)
        self.text.insertPlainText(chunk.decode("utf-8", errors="replace"))
        if at_end:
            self.text.moveCursor(QTextCursor.MoveOperation.End)
            self.text.ensureCursorVisible()
