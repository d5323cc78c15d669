"""Where the user writes: the message box and the row of Send, Stop, Regenerate and Copy."""
from __future__ import annotations

import logging

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

log = logging.getLogger(__name__)

CHAT_HINT = "Message (Enter sends, Shift+Enter for a new line)"
COMPLETION_HINT = "The start of a text for the model to continue (Enter sends, Shift+Enter for a new line)"


class ChatInput(QPlainTextEdit):
    """Enter sends, Shift+Enter makes a new line."""

    submitted = Signal()

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and \
                not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class Composer(QWidget):
    """The message box and its buttons; the window decides what each request does."""

    send_requested = Signal()
    stop_requested = Signal()
    regenerate_requested = Signal()
    copy_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.input = ChatInput()
        self.input.setPlaceholderText(CHAT_HINT)
        self.input.setAccessibleName("Message")
        self.input.setMaximumHeight(110)
        self.input.submitted.connect(self.send_requested)
        layout.addWidget(self.input)

        buttons = QHBoxLayout()
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send_requested)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop generating (Esc)")
        self.stop_button.clicked.connect(self.stop_requested)
        self.regen_button = QPushButton("Regenerate")
        self.regen_button.clicked.connect(self.regenerate_requested)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the last reply")
        self.copy_button.clicked.connect(self.copy_requested)
        for b in (self.send_button, self.stop_button, self.regen_button, self.copy_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        layout.addLayout(buttons)

    def text(self) -> str:
        return self.input.toPlainText()

    def set_text(self, text: str) -> None:
        """Put text back in the box (a message to edit or to send again)."""
        self.input.setPlainText(text)

    def clear(self) -> None:
        self.input.clear()

    def focus(self) -> None:
        self.input.setFocus()

    def set_completion(self, completion: bool) -> None:
        """The model only continues text: the box asks for the start of one, not a message."""
        self.input.setPlaceholderText(COMPLETION_HINT if completion else CHAT_HINT)

    def set_state(self, *, busy: bool, has_user_message: bool, has_reply: bool) -> None:
        """Busy (a reply streams or an engine starts): only Stop and Copy stay usable."""
        self.send_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        self.regen_button.setEnabled(not busy and has_user_message)
        self.copy_button.setEnabled(has_reply)
