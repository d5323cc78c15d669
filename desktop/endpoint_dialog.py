"""Edit a remote server (an "Edit the endpoint" fix): its address and its API key, checked on Save.

The core keeps the remote (:func:`engines.chat.remotes.edit`: the key in the keyring, or the
name of a variable holding it; an empty key field keeps the key it has) and asks the server
for its models; both run off the GUI thread. The dialog says what the server answered, or
why it did not, and stays open until the server answers.
"""
from __future__ import annotations

import logging

from PySide6.QtCore import Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QVBoxLayout, QWidget)

from engines.chat import remotes

from .bridge import run_async
from .widgets import apply_style, error_label, muted_label, primary_button

log = logging.getLogger(__name__)


def _check(name: str, url: str, key: str, key_env: str) -> tuple[remotes.Remote, list[str]]:
    """Save the remote, then ask the server for its models (blocking: off the GUI thread)."""
    remote = remotes.edit(name, url, key or None, key_env or None)
    return remote, remotes.models(remote, use_cache=False)


class EndpointDialog(QDialog):
    """A remote's name, URL and key; Save checks that the server answers."""

    saved = Signal(str)   # the remote's name, once the server answered

    def __init__(self, name: str | None = None, parent: QWidget | None = None, problem: str = ""):
        super().__init__(parent)
        current = None
        if name:
            try:
                current = remotes.get(name)
            except remotes.RemoteError:
                current = None
        self.setWindowTitle("Ember: " + (f"Edit {name}" if name else "Add a remote server"))
        apply_style(self)
        self.setMinimumWidth(560)
        layout = QVBoxLayout(self)
        heading = QLabel(f"The server {name}" if name else "A remote server")
        font = QFont(heading.font())
        font.setPointSizeF(font.pointSizeF() * 1.2)
        font.setBold(True)
        heading.setFont(font)
        layout.addWidget(heading)
        self.problem = muted_label(problem)
        self.problem.setVisible(bool(problem))
        layout.addWidget(self.problem)
        form = QFormLayout()
        self.name_edit = QLineEdit(name or "")
        self.name_edit.setReadOnly(bool(current))
        self.name_edit.setAccessibleName("Remote name")
        self.url_edit = QLineEdit(current.url if current else "")
        self.url_edit.setPlaceholderText("http://host:9997/v1")
        self.url_edit.setAccessibleName("Server address")
        self.key_edit = QLineEdit()
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setAccessibleName("API key")
        kept = {"keyring": "the key in the system keyring is kept", "env": f"read from ${current.key_env}"} \
            .get(current.key_source, "no key") if current else "no key"
        self.key_edit.setPlaceholderText(f"Leave empty: {kept}")
        self.env_edit = QLineEdit(current.key_env or "" if current and current.key_source == "env" else "")
        self.env_edit.setPlaceholderText("or the name of an environment variable holding it")
        self.env_edit.setAccessibleName("API key variable")
        form.addRow("&Name", self.name_edit)
        form.addRow("&Address", self.url_edit)
        form.addRow("API &key", self.key_edit)
        form.addRow("Key &variable", self.env_edit)
        layout.addLayout(form)
        self.status = muted_label()
        self.status.hide()
        layout.addWidget(self.status)
        self.error = error_label()
        layout.addWidget(self.error)
        self.buttons = QDialogButtonBox()
        self.save_button = primary_button("Save and check")
        self.save_button.setDefault(True)
        self.save_button.clicked.connect(self.save)
        self.buttons.addButton(self.save_button, QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        (self.key_edit if current else self.name_edit).setFocus()

    def save(self) -> None:
        """Keep the remote and ask the server for its models, off the GUI thread."""
        name, url = self.name_edit.text().strip(), self.url_edit.text().strip()
        key, key_env = self.key_edit.text().strip(), self.env_edit.text().strip()
        if key and key_env:
            key_env = ""  # a key typed now wins over the variable
        self.error.hide()
        self.status.setText(f"Asking {url or 'the server'} for its models\u2026")
        self.status.show()
        self.save_button.setEnabled(False)
        run_async(lambda: _check(name, url, key, key_env), self._answered, self._failed, name="edit-remote",
                  owner=self)

    def _answered(self, result: tuple[remotes.Remote, list[str]]) -> None:
        remote, models = result
        self.save_button.setEnabled(True)
        self.status.setText(f"Saved. {remote.url} lists {len(models)} model{'s' if len(models) != 1 else ''}"
                            + (f": {', '.join(models[:5])}" if models else "") + ".")
        self.saved.emit(remote.name)
        self.accept()

    def _failed(self, exc: BaseException) -> None:
        self.save_button.setEnabled(True)
        self.status.hide()
        words = getattr(exc, "message", None) or getattr(exc, "error_message", None) or str(exc)
        if isinstance(exc, remotes.RemoteError):
            self.error.setText(words)
        else:
            self.error.setText(f"Saved, but the server did not answer: {words}")
        self.error.show()
