"""Chat history in SQLite (WAL), shared by the CLI and the desktop.

Messages are written as they happen: the user's message before it is sent, the
reply while it streams (``complete`` = 0 until it ends), so a crash of the engine
or of the app loses at most the last second of a reply.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engines import paths

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    model TEXT,
    system_prompt TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 1,
    model TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


@dataclass
class Conversation:
    id: int
    title: str
    model: str | None
    system_prompt: str
    created: float
    updated: float


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str          # system | user | assistant
    content: str
    complete: bool
    model: str | None
    created: float


def default_path() -> Path:
    return paths.data_dir() / "conversations.sqlite3"


def title_from(text: str, limit: int = 48) -> str:
    """A conversation's first title: the first line of its first message, shortened."""
    line = " ".join(text.strip().split())
    return (line[: limit - 1] + "…") if len(line) > limit else (line or "New chat")


class Store:
    """One SQLite database; safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # -- conversations --------------------------------------------------------------
    def create(self, title: str = "New chat", model: str | None = None, system_prompt: str = "") -> Conversation:
        now = time.time()
        cur = self._exec("INSERT INTO conversations(title, model, system_prompt, created, updated) "
                         "VALUES (?, ?, ?, ?, ?)", (title, model, system_prompt, now, now))
        return self.get(cur.lastrowid)

    def get(self, conversation_id: int) -> Conversation | None:
        row = self._exec("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return Conversation(**dict(row)) if row else None

    def list(self) -> list[Conversation]:
        """Most recently used first."""
        rows = self._exec("SELECT * FROM conversations ORDER BY updated DESC, id DESC").fetchall()
        return [Conversation(**dict(r)) for r in rows]

    def rename(self, conversation_id: int, title: str) -> None:
        title = title.strip()
        if not title:
            raise ValueError("a conversation's title cannot be empty")
        self._exec("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))

    def set_system_prompt(self, conversation_id: int, prompt: str) -> None:
        self._exec("UPDATE conversations SET system_prompt = ? WHERE id = ?", (prompt, conversation_id))

    def set_model(self, conversation_id: int, model: str | None) -> None:
        self._exec("UPDATE conversations SET model = ? WHERE id = ?", (model, conversation_id))

    def delete(self, conversation_id: int) -> None:
        with self._lock:
            self._exec("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            self._exec("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- messages -------------------------------------------------------------------
    def add_message(self, conversation_id: int, role: str, content: str, complete: bool = True,
                    model: str | None = None) -> int:
        now = time.time()
        with self._lock:
            cur = self._exec("INSERT INTO messages(conversation_id, role, content, complete, model, created) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (conversation_id, role, content, int(complete), model, now))
            self._exec("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
            return cur.lastrowid

    def update_message(self, message_id: int, content: str, complete: bool | None = None) -> None:
        if complete is None:
            self._exec("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))
        else:
            self._exec("UPDATE messages SET content = ?, complete = ? WHERE id = ?",
                       (content, int(complete), message_id))

    def delete_message(self, message_id: int) -> None:
        self._exec("DELETE FROM messages WHERE id = ?", (message_id,))

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self._exec("SELECT * FROM messages WHERE conversation_id = ? ORDER BY id",
                          (conversation_id,)).fetchall()
        return [Message(**{**dict(r), "complete": bool(r["complete"])}) for r in rows]
