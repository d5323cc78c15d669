"""The conversation as rendered markdown, built one message at a time.

Re-parsing the whole conversation on every streamed flush made each flush cost more
as the conversation grew. Here each message is parsed once, when it is added; only
the streaming message (always the last) is parsed again, its range of the document
replaced. The document is the one a single ``setMarkdown`` of the whole conversation
gives: the messages separated by rules, code blocks shaded.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

from PySide6.QtGui import (QColor, QPalette, QTextBlockFormat, QTextCharFormat, QTextCursor, QTextDocument,
                           QTextDocumentFragment, QTextFormat)
from PySide6.QtWidgets import QTextBrowser, QWidget

log = logging.getLogger(__name__)

PLACEHOLDER = "<p style='color: gray'>Start a conversation: type a message below.</p>"
STREAMING_MARK = " ▍"      # after the text of a reply that is still coming
WAITING_TEXT = "_…_"       # a reply that has no text yet


@dataclass
class ChatMessage:
    role: str
    content: str
    id: int | None = None
    model: str | None = None
    streaming: bool = False


def message_markdown(m: ChatMessage) -> str:
    """One message as markdown: who wrote it in bold, then the text."""
    who = "You" if m.role == "user" else (m.model or "Assistant")
    body = m.content + (STREAMING_MARK if m.streaming else "")
    if m.role == "assistant" and not m.content and m.streaming:
        body = WAITING_TEXT
    return f"**{who}**\n\n{body}\n"


def _rule_format() -> QTextBlockFormat:
    """The block Qt's markdown import makes of ``---``: the line between two messages."""
    fmt = QTextBlockFormat()
    fmt.setProperty(QTextFormat.Property.BlockTrailingHorizontalRulerWidth, 1)
    return fmt


def code_shade(palette: QPalette) -> QColor:
    """The background of code blocks: the alternate base, or a touch darker than the base if they match."""
    shade = palette.color(QPalette.ColorRole.AlternateBase)
    return shade.darker(106) if shade == palette.color(QPalette.ColorRole.Base) else shade


def shade_code_blocks(doc: QTextDocument, shade: QColor, start: int = 0, end: int | None = None) -> None:
    """Give the code blocks between two positions a background (Qt's markdown import marks them, but
    draws them plain)."""
    end = doc.characterCount() if end is None else end
    cursor = QTextCursor(doc)
    block = doc.findBlock(start)
    while block.isValid() and block.position() <= end:
        fmt = block.blockFormat()
        if fmt.hasProperty(QTextFormat.Property.BlockCodeFence) or fmt.nonBreakableLines():
            fmt.setBackground(shade)
            cursor.setPosition(block.position())
            cursor.setBlockFormat(fmt)
        block = block.next()


@dataclass
class _Span:
    start: int   # where the message's range begins (its rule, after the first message)
    text: int    # where its own text begins


class Transcript(QTextBrowser):
    """The messages of one conversation; the last one may be re-rendered while it streams."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setOpenExternalLinks(True)
        self.setAccessibleName("Conversation")
        self.document().setUndoRedoEnabled(False)  # edited on every flush: an undo stack would only grow
        self._messages: list[ChatMessage] = []
        self._spans: list[_Span] = []
        self._follow = True       # keep the view at the end: true until the reader scrolls up
        self._moving = False      # the view is being moved by us, not by the reader
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._scrolled)
        bar.rangeChanged.connect(self._range_changed)
        self.setHtml(PLACEHOLDER)

    @property
    def following(self) -> bool:
        """Whether the view stays at the end as text comes (the reader has not scrolled up)."""
        return self._follow

    def follow(self) -> None:
        """Go to the end and stay there as text comes (the user sent or resent a message)."""
        self._follow = True
        self._to_end()

    @property
    def messages(self) -> list[ChatMessage]:
        """The messages shown, oldest first: add or drop them here; after the last one's text
        changes, :meth:`refresh_last` shows it."""
        return self._messages

    def show_messages(self, messages: Sequence[ChatMessage]) -> None:
        """Show another conversation (or none: a hint to start one), at its end."""
        with self._moving_it():
            self._messages, self._spans = [], []
            if not messages:
                self.setHtml(PLACEHOLDER)
            for m in messages:
                self._add(m)
        self.follow()

    def append(self, message: ChatMessage) -> None:
        """Add a message at the end; the messages before it are not touched."""
        with self._moving_it():
            self._add(message)

    def refresh_last(self) -> None:
        """Render the last message again (its text grew, or it stopped streaming)."""
        if not self._messages:
            return
        with self._moving_it():
            cursor = self._cursor_to_end_from(self._spans[-1].text)
            cursor.removeSelectedText()
            self._render(cursor, self._messages[-1])

    def drop_last(self) -> ChatMessage | None:
        """Remove the last message (a reply being regenerated, or one that failed before any text)."""
        if not self._messages:
            return None
        with self._moving_it():
            message, span = self._messages.pop(), self._spans.pop()
            if self._messages:
                self._cursor_to_end_from(span.start).removeSelectedText()
            else:
                self.setHtml(PLACEHOLDER)
        return message

    # -- the document -----------------------------------------------------------------
    def _add(self, message: ChatMessage) -> None:
        if not self._messages:
            self.document().clear()  # the placeholder
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        start = cursor.position()
        if self._messages:  # what "---" between two messages gives in one markdown document
            cursor.insertBlock(_rule_format(), QTextCharFormat())
            cursor.insertBlock(QTextBlockFormat(), QTextCharFormat())
        self._messages.append(message)
        self._spans.append(_Span(start, cursor.position()))
        self._render(cursor, message)

    def _cursor_to_end_from(self, position: int) -> QTextCursor:
        cursor = QTextCursor(self.document())
        cursor.setPosition(position)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        return cursor

    def _render(self, cursor: QTextCursor, message: ChatMessage) -> None:
        """Parse one message's markdown and insert it at ``cursor`` (an empty block at the end)."""
        start = cursor.position()
        parsed = QTextDocument()
        parsed.setDefaultFont(self.document().defaultFont())  # the code font is sized from it
        parsed.setMarkdown(message_markdown(message))
        cursor.setBlockFormat(parsed.begin().blockFormat())  # an insert keeps the target block's format
        cursor.insertFragment(QTextDocumentFragment(parsed))
        shade_code_blocks(self.document(), code_shade(self.palette()), start, cursor.position())

    # -- following the end ------------------------------------------------------------
    # The view follows a streaming reply while the reader is at the end. Whether they are
    # is a state, changed only by the reader's own scrolling: measuring it at each change
    # failed whenever the range grew without a change of ours (the document's lazy layout
    # finishing later, a busy row or banner shrinking the view during an engine restart),
    # and the reply then streamed out of view.
    @contextmanager
    def _moving_it(self) -> Iterator[None]:
        """Our own edits: the scroll moves they cause are not the reader's."""
        self._moving = True
        try:
            yield
        finally:
            self._moving = False
        if self._follow:
            self._to_end()

    def _to_end(self) -> None:
        bar = self.verticalScrollBar()
        self._moving = True
        try:
            bar.setValue(bar.maximum())
        finally:
            self._moving = False

    def _scrolled(self, value: int) -> None:
        if not self._moving:
            self._follow = value >= self.verticalScrollBar().maximum() - 4

    def _range_changed(self, _minimum: int, _maximum: int) -> None:
        if self._follow:
            self._to_end()
