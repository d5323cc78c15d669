"""A framed row above the transcript: a sentence and two buttons (the 'no model' offer, the finish banner)."""
from __future__ import annotations

import logging

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

log = logging.getLogger(__name__)


class NoticeRow(QFrame):
    """``text`` then the ``action`` button (what to do about it) and a ``second`` one beside it."""

    action_clicked = Signal()
    second_clicked = Signal()

    def __init__(self, text: str, action: str, second: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        row = QHBoxLayout(self)
        self.label = QLabel(text)
        row.addWidget(self.label, 1)
        self.button = QPushButton(action)
        self.button.clicked.connect(self.action_clicked)
        row.addWidget(self.button)
        self.second_button = QPushButton(second)
        self.second_button.clicked.connect(self.second_clicked)
        row.addWidget(self.second_button)


class HistoryBanner(NoticeRow):
    """The chat history's notice (a damaged file moved aside, or chats not saved): Show folder, Dismiss.

    The sentence is :meth:`engines.chat.conversations.HistoryNotice.sentence`, written once there."""

    folder_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("", "Show folder", "Dismiss", parent)
        self.setAccessibleName("Chat history notice")
        self.label.setWordWrap(True)
        self.folder = ""
        self.action_clicked.connect(lambda: self.folder_requested.emit(self.folder))
        self.second_clicked.connect(self.hide)
        self.hide()

    def show_notice(self, notice) -> None:
        """Show ``notice`` (a HistoryNotice), or hide when there is none."""
        if notice is None:
            self.hide()
            return
        self.folder = str(notice.moved_to.parent if notice.moved_to else notice.folder)
        self.label.setText(notice.sentence())
        self.show()
