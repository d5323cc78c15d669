"""The welcome card: what the chat window shows first while no chat model is on this computer.

The starter is a tiny offline demo that continues text; a newcomer who asks it a
question gets an echo, not an answer. So until a model that follows instructions
is downloaded (:mod:`engines.chat.first_run`), a new chat opens on this card: it
says what the starter is, leads to the models window ("Choose a chat model…",
where the recommended models have "Download and chat"), and keeps the starter one
click away. Offline, it says so plainly. :class:`Welcome` decides when the card takes
the transcript's place.
"""
from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QStackedWidget, QVBoxLayout, QWidget

from engines.chat import first_run
from engines.chat.first_run import FirstRun

from ..bridge import run_async
from .transcript import Transcript

log = logging.getLogger(__name__)

TITLE = "Welcome to Ember"
ABOUT_STARTER = ("Ember runs AI models on this computer. The only model here now is the starter: "
                 "a tiny offline demo that continues your text. It does not follow instructions or "
                 "answer questions; ask it one and it writes more questions.")
LEAD = ("For a real chat, download a chat model. Models recommends the ones that fit this computer; "
        "one click downloads it and starts the chat.")
OFFLINE_TAIL = "The starter works without a network; you can download a chat model later."


class WelcomeCard(QFrame):
    """The card itself; the window decides when it shows and what each button does."""

    choose_clicked = Signal()    # open the models window
    starter_clicked = Signal()   # chat with the starter anyway

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setAccessibleName("Welcome")
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        column = QVBoxLayout()
        self.title = QLabel(TITLE)
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        self.title.setFont(font)
        column.addWidget(self.title)
        self.about = self._paragraph(ABOUT_STARTER)
        self.lead = self._paragraph(LEAD)
        self.offline = self._paragraph("")
        self.offline.setAccessibleName("Offline")
        self.offline.hide()
        for label in (self.about, self.lead, self.offline):
            column.addWidget(label)
        column.addSpacing(8)
        column.addLayout(self._buttons())
        row = QHBoxLayout()
        row.addStretch(1)
        box = QWidget()
        box.setLayout(column)
        box.setMaximumWidth(620)
        row.addWidget(box, 20)
        row.addStretch(1)
        outer.addLayout(row)
        outer.addStretch(2)

    def _paragraph(self, text: str) -> QLabel:
        label = QLabel(text)
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    def _buttons(self) -> QHBoxLayout:
        buttons = QHBoxLayout()
        self.choose_button = QPushButton("Choose a chat model…")
        self.choose_button.setDefault(True)
        self.choose_button.clicked.connect(self.choose_clicked)
        self.starter_button = QPushButton("Try the starter (text continuation)")
        self.starter_button.clicked.connect(self.starter_clicked)
        buttons.addWidget(self.choose_button)
        buttons.addWidget(self.starter_button)
        buttons.addStretch(1)
        return buttons

    def show_facts(self, facts: FirstRun) -> None:
        """Say what a download can do now: offline, the lead to Models gives way to a plain sentence."""
        if facts.offline:
            self.offline.setText(f"<b>You are offline.</b> {facts.offline} {OFFLINE_TAIL}")
            self.offline.show()
            self.lead.hide()
        else:
            self.offline.hide()
            self.lead.show()


class Welcome(QObject):
    """The card or the transcript, in one stack: the card while no chat model is here, the chat is new
    and empty, and the user has not chosen to chat anyway (for this session)."""

    checked = Signal(object)   # FirstRun, each time the check ends
    switched = Signal()        # the card appeared or went away

    def __init__(self, transcript: Transcript, parent: QObject | None = None):
        super().__init__(parent)
        self.transcript = transcript
        self.card = WelcomeCard()
        self.stack = QStackedWidget()
        self.stack.addWidget(transcript)
        self.stack.addWidget(self.card)
        self.facts: FirstRun | None = None   # known once checked off the GUI thread
        self._dismissed = False
        self._call = None

    @property
    def shown(self) -> bool:
        return self.stack.currentWidget() is self.card

    def check(self) -> None:
        """Find out (off the GUI thread) whether a chat model is here and the Hub answers, then show
        the card or not."""
        if self._call is not None:
            return

        def known(facts: FirstRun) -> None:
            self._call = None
            self.facts = facts
            self.card.show_facts(facts)
            self.show_if_needed()
            self.checked.emit(facts)

        def failed(exc: BaseException) -> None:
            self._call = None
            log.warning("the first-run check failed: %s", exc)

        self._call = run_async(first_run.check, known, failed, name="first-run-check", owner=self)

    def recheck(self) -> None:
        """Check again while the card may still be due (a chat model may have been downloaded since)."""
        if self.facts is not None and not self.facts.has_chat_model:
            self.check()

    def show_if_needed(self) -> None:
        due = (self.facts is not None and not self.facts.has_chat_model and not self._dismissed
               and not self.transcript.messages)
        self._show(self.card if due else self.transcript)

    def dismiss(self) -> None:
        """Back to the transcript for this session (the user chose to chat anyway)."""
        self._dismissed = True
        self._show(self.transcript)

    def _show(self, widget: QWidget) -> None:
        if self.stack.currentWidget() is not widget:
            self.stack.setCurrentWidget(widget)
            self.switched.emit()
