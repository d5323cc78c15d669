"""The saved conversations beside the chat: open one, start a new one, rename in place, delete."""
from __future__ import annotations

import logging

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QHBoxLayout, QListWidget, QListWidgetItem, QMessageBox, QPushButton, QVBoxLayout,
                               QWidget)

from engines.chat import conversations

log = logging.getLogger(__name__)


class ConversationList(QWidget):
    """Lists the store's conversations, most recent first, and renames or deletes them there.

    The window says which conversation is open (:meth:`refresh`, :meth:`set_current`,
    :meth:`clear_selection`); the list reports what the user did through its signals.
    """

    new_requested = Signal()
    opened = Signal(int)     # a conversation the user picked
    renamed = Signal(int)    # a conversation whose title changed in the store
    deleted = Signal(int)    # a conversation removed from the store

    def __init__(self, store: conversations.Store, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self._current: int | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 0, 6)
        self.new_button = QPushButton("New chat")
        self.new_button.clicked.connect(self.new_requested)
        layout.addWidget(self.new_button)
        self.list = QListWidget()
        self.list.setAccessibleName("Conversations")
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setEditTriggers(QListWidget.EditTrigger.EditKeyPressed | QListWidget.EditTrigger.DoubleClicked)
        self.list.currentItemChanged.connect(self._selected)
        self.list.itemChanged.connect(self._edited)
        layout.addWidget(self.list)
        row = QHBoxLayout()
        self.rename_button = QPushButton("Rename")
        self.rename_button.clicked.connect(self._rename_clicked)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self._delete_clicked)
        row.addWidget(self.rename_button)
        row.addWidget(self.delete_button)
        layout.addLayout(row)

    def refresh(self, current_id: int | None = None) -> None:
        """List the conversations again, ``current_id`` (the open one) selected."""
        self._current = current_id
        self._fill()

    def set_current(self, conversation_id: int | None) -> None:
        """The conversation the window has open (selected at the next refresh)."""
        self._current = conversation_id

    def clear_selection(self) -> None:
        """No conversation open (a new chat), without reporting it as a pick."""
        self._current = None
        self.list.blockSignals(True)
        self.list.clearSelection()
        self.list.setCurrentItem(None)
        self.list.blockSignals(False)

    def set_busy(self, busy: bool) -> None:
        """While a reply streams or an engine starts, the open conversation stays put."""
        self.list.setEnabled(not busy)
        self.new_button.setEnabled(not busy)
        self.rename_button.setEnabled(not busy and self._current is not None)
        self.delete_button.setEnabled(not busy and self._current is not None)

    def rename(self, conversation_id: int, title: str) -> None:
        self.store.rename(conversation_id, title)
        self.renamed.emit(conversation_id)
        self._fill()

    def delete(self, conversation_id: int) -> None:
        self.store.delete(conversation_id)
        self.deleted.emit(conversation_id)
        self._fill()

    def _fill(self) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for conv in self.store.list():
            item = QListWidgetItem(conv.title)
            item.setData(Qt.ItemDataRole.UserRole, conv.id)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            self.list.addItem(item)
            if conv.id == self._current:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)

    def _selected(self, item, _previous=None) -> None:
        if item is not None:
            self._current = int(item.data(Qt.ItemDataRole.UserRole))
            self.opened.emit(self._current)

    def _edited(self, item) -> None:
        title = item.text().strip()
        if title:
            self.rename(int(item.data(Qt.ItemDataRole.UserRole)), title)
        else:
            self._fill()  # an empty title puts the old one back

    def _rename_clicked(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self.list.editItem(item)

    def _delete_clicked(self) -> None:
        conv = self.store.get(self._current) if self._current is not None else None
        if conv is None:
            return
        answer = QMessageBox.question(self, "Delete conversation", f"Delete “{conv.title}”? This cannot be undone.")
        if answer == QMessageBox.StandardButton.Yes:
            self.delete(conv.id)
