"""The rows the engine control shows above the transcript: the offer, the completion note, the busy row."""
from __future__ import annotations

import logging

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from engines.chat.completion_mode import COMPLETION_NOTE
from engines.models import store

from .notice import NoticeRow

log = logging.getLogger(__name__)


#: How the chat window speaks of the starter wherever it names it (issue 11: honestly).
STARTER_WORDS = "a tiny offline demo that continues your text; it does not follow instructions"

#: The picker's mark on a model that only continues text.
COMPLETION_MARK = f" \u2014 {COMPLETION_NOTE}"


class OfferRow(NoticeRow):
    """'No model is running': start the offered one in one click (the action), or browse the models."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("No model is running.", "Start the starter", "Models…", parent)
        self.label.setWordWrap(True)

    def offer(self, name: str) -> None:
        if name == store.STARTER:
            self.button.setText("Start the starter")
            self.label.setText(f"No model is running. The starter is {STARTER_WORDS}. "
                               "For a real chat, choose a chat model in Models.")
        else:
            self.button.setText(f"Start {name}")
            self.label.setText(f"No model is running. Start {name} in one click, or choose another in Models.")


class CompletionNote(NoticeRow):
    """Under the picker while a text-completion model is chosen: what it does, and the way to a chat model."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("", "Choose a chat model…", "", parent)
        self.label.setWordWrap(True)
        self.label.setAccessibleName("About this model")
        self.second_button.hide()
        self.hide()

    def describe(self, name: str) -> None:
        if name == store.STARTER:
            self.label.setText(f"The starter is {STARTER_WORDS}: your message is the start of a text "
                               "it goes on writing.")
        else:
            self.label.setText(f"{name} has no chat template: it {COMPLETION_NOTE}. Your message is "
                               "the start of a text it goes on writing.")


class BusyRow(QFrame):
    """An engine starting: what is happening, an endless progress bar, Cancel."""

    cancel_clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        self.label = QLabel()
        row.addWidget(self.label)
        bar = QProgressBar(minimum=0, maximum=0)
        bar.setMaximumWidth(160)
        bar.setAccessibleName("Loading")
        row.addWidget(bar)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_clicked)
        row.addWidget(self.cancel_button)
        self.hide()
