"""Open a folder in the file manager, or, where there is none, show its path with a Copy button.

``QDesktopServices.openUrl`` answers False when no file manager or ``xdg-open`` is
installed (a minimal desktop, a server with X forwarding): the click must still
lead somewhere, so the user gets the path to copy.
"""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

log = logging.getLogger(__name__)


class FolderDialog(QDialog):
    """Where a folder is, selectable, with Copy: what "Open folder" shows without a file manager."""

    def __init__(self, path: Path | str, title: str = "Folder", parent: QWidget | None = None):
        super().__init__(parent)
        self.path = str(path)
        self.setWindowTitle(f"Ember: {title}")
        self.setMinimumWidth(520)
        layout = QVBoxLayout(self)
        self.message = QLabel("No file manager is set up on this computer to open it. The folder is:")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        self.path_field = QLineEdit(self.path)
        self.path_field.setReadOnly(True)
        self.path_field.setAccessibleName("Folder path")
        self.path_field.setCursorPosition(0)
        layout.addWidget(self.path_field)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setDefault(True)
        self.copy_button.clicked.connect(self.copy)
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.path)
        self.copy_button.setText("Copied")


def open_folder(path: Path | str, title: str = "Folder", parent: QWidget | None = None) -> FolderDialog | None:
    """Open ``path`` in the file manager; when that fails, show (and return) a :class:`FolderDialog`.

    Without a parent, keep a reference to the dialog (Python owns a parentless window)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
        return None
    log.info("no file manager opened %s: showing its path", folder)
    dialog = FolderDialog(folder, title, parent)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
    return dialog
