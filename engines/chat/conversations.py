"""Chat history in SQLite (WAL), shared by the CLI and the desktop.

Messages are written as they happen: the user's message before it is sent, the
reply while it streams (``complete`` = 0 until it ends), so a crash of the engine
or of the app loses at most the last second of a reply.

The database is the user's alone (0600, and SQLite gives its ``-wal``/``-shm``
files the same mode). A history that cannot be read never stops the app: a
damaged file is moved aside under a dated name, whatever rows SQLite can still
read are copied into a fresh one, and :attr:`Store.notice` says so; where
nothing can be written (a full disk, a read-only folder) the chats of this
session are kept in memory and the notice says that instead (issue 14).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

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


#: SQLite's primary result codes (``sqlite3.Error.sqlite_errorcode & 0xff``) that mean the file is damaged,
#: and those that mean nothing can be written where it lives.
_CORRUPT_CODES = {11, 26}           # SQLITE_CORRUPT, SQLITE_NOTADB
_UNWRITABLE_CODES = {3, 8, 10, 13, 14}  # SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN
_CORRUPT_WORDS = ("file is not a database", "malformed", "corrupt")
_UNWRITABLE_WORDS = ("disk is full", "unable to open", "readonly", "disk i/o error", "read-only")
#: Row ids tried one by one when a table cannot be read whole (a damaged page in the middle).
SALVAGE_LIMIT = 200_000
CONVERSATION_COLUMNS = ("id", "title", "model", "system_prompt", "created", "updated")
MESSAGE_COLUMNS = ("id", "conversation_id", "role", "content", "complete", "model", "created")


@dataclass(frozen=True)
class HistoryNotice:
    """What the user must be told about their chat history when it is opened.

    ``kind``: "recovered" (the file was damaged; ``moved_to`` is where it is kept, with the counts of
    what was copied out of it) or "not_saved" (nothing can be written; chats live until Ember quits)."""

    kind: str
    folder: Path
    reason: str
    moved_to: Path | None = None
    conversations: int = 0
    messages: int = 0

    def sentence(self) -> str:
        if self.kind == "recovered":
            saved = (f" {self.conversations} conversation(s) with {self.messages} message(s) were recovered "
                     "from it." if self.conversations else " Nothing could be recovered from it.")
            return (f"Your chat history could not be read ({self.reason}), so Ember started a new one. "
                    f"The damaged file is kept at {self.moved_to}.{saved}")
        return (f"Ember cannot save chats in {self.folder}: {self.reason} "
                "Until then, chats are kept only while Ember runs.")


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_corrupt(exc: BaseException) -> bool:
    """SQLite says the file is not a database, or a damaged one."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = _code(exc)
    return code in _CORRUPT_CODES if code is not None else any(w in str(exc).lower() for w in _CORRUPT_WORDS)


def cannot_write(exc: BaseException) -> bool:
    """The disk is full, or the folder or file cannot be written."""
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = _code(exc)
    return code in _UNWRITABLE_CODES if code is not None else any(w in str(exc).lower() for w in _UNWRITABLE_WORDS)


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
        self._lock = threading.RLock()
        self.notice: HistoryNotice | None = None
        try:
            self._db = self._open(self.path)
        except (sqlite3.DatabaseError, OSError) as exc:
            if is_corrupt(exc):
                self._db = self._recover(exc)
            elif cannot_write(exc):
                self._db = self._in_memory(exc)
            else:
                raise
        if self.notice is not None:
            log.warning("chat history: %s", self.notice.sentence())

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        """Open (or create, 0600) and check the database; raises what SQLite says of a damaged file."""
        paths.private_dir(path.parent)
        paths.make_private_file(path)  # SQLite gives the -wal and -shm files the database's own mode
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                log.warning("chat history %s fails SQLite's check: %s", path, " ".join(str(check).split()))
                raise sqlite3.DatabaseError("database disk image is malformed")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _in_memory(self, exc: BaseException, notice_reason: str | None = None) -> sqlite3.Connection:
        """Nothing can be written where the history lives: this session's chats are kept in memory."""
        folder = self.path.parent
        if notice_reason is None:
            full = paths.is_no_space(exc) or "full" in str(exc).lower()
            notice_reason = (paths.NoSpace(folder, paths.free_bytes(folder), None, "your chats").message if full
                             else f"{getattr(exc, 'strerror', None) or exc}.")
        self.notice = HistoryNotice("not_saved", folder, notice_reason)
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(SCHEMA)
        return db

    def _recover(self, exc: BaseException) -> sqlite3.Connection:
        """Move the damaged file aside (dated), start a fresh one and copy in what can still be read."""
        moved = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 2
        while moved.exists():
            moved = moved.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        try:
            for suffix in ("", "-wal", "-shm"):  # the WAL may hold the newest messages: it travels with the file
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(moved) + suffix))
        except OSError as move_error:
            log.warning("cannot move the damaged chat history %s aside: %s", self.path, move_error)
            return self._in_memory(move_error, f"the chat history there is damaged ({exc}) and cannot be moved "
                                               f"aside ({move_error.strerror or move_error}).")
        log.warning("chat history %s is damaged (%s); moved to %s", self.path, exc, moved)
        conversations, messages = salvage(moved)
        try:
            db = self._open(self.path)
        except (sqlite3.DatabaseError, OSError) as again:
            return self._in_memory(again)
        kept_c, kept_m = _insert(db, conversations, messages)
        why = "it is not a database file" if "not a database" in str(exc) else "the file is damaged"
        self.notice = HistoryNotice("recovered", self.path.parent, why, moved, kept_c, kept_m)
        return db

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


# -- salvage ---------------------------------------------------------------------------------------------

def salvage(path: Path) -> tuple[list[dict], list[dict]]:
    """The conversations and messages SQLite can still read from a damaged file (read-only): each table
    whole if it can, else row by row, skipping the rows on damaged pages."""
    try:
        src = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    except sqlite3.Error:
        return [], []
    src.row_factory = sqlite3.Row
    try:
        return (_readable_rows(src, "conversations", CONVERSATION_COLUMNS),
                _readable_rows(src, "messages", MESSAGE_COLUMNS))
    finally:
        src.close()


def _readable_rows(db: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> list[dict]:
    cols = ", ".join(columns)
    try:
        return [dict(r) for r in db.execute(f"SELECT {cols} FROM {table} ORDER BY id")]
    except sqlite3.Error:
        pass
    top = None
    for sql, args in (("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)), (f"SELECT max(id) FROM {table}", ())):
        try:
            row = db.execute(sql, args).fetchone()
        except sqlite3.Error:
            continue
        top = row[0] if row and isinstance(row[0], int) else None
        if top:
            break
    out = []
    for i in range(1, min(top or SALVAGE_LIMIT, SALVAGE_LIMIT) + 1):
        try:
            row = db.execute(f"SELECT {cols} FROM {table} WHERE id = ?", (i,)).fetchone()
        except sqlite3.Error:
            continue
        if row is not None:
            out.append(dict(row))
    return out


def _insert(db: sqlite3.Connection, conversations: list[dict], messages: list[dict]) -> tuple[int, int]:
    """Copy salvaged rows into a fresh database (ids kept); messages whose conversation was lost get a
    "Recovered chat" of their own. Rows SQLite read but that break the schema are skipped."""
    kept_c, kept_m = set(), 0
    db.execute("BEGIN")
    try:
        for c in conversations:
            try:
                db.execute("INSERT INTO conversations(id, title, model, system_prompt, created, updated) "
                           "VALUES (?, ?, ?, ?, ?, ?)", tuple(c[k] for k in CONVERSATION_COLUMNS))
                kept_c.add(c["id"])
            except (sqlite3.Error, KeyError):
                continue
        orphans: dict[int, list[float]] = {}
        for m in messages:
            cid = m.get("conversation_id")
            if cid not in kept_c and isinstance(cid, int):
                created = m.get("created")
                orphans.setdefault(cid, []).append(created if isinstance(created, (int, float)) else time.time())
        for cid, times in orphans.items():
            try:
                db.execute("INSERT INTO conversations(id, title, model, system_prompt, created, updated) "
                           "VALUES (?, 'Recovered chat', NULL, '', ?, ?)", (cid, min(times), max(times)))
                kept_c.add(cid)
            except sqlite3.Error:
                continue
        for m in messages:
            try:
                db.execute("INSERT INTO messages(id, conversation_id, role, content, complete, model, created) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(m[k] for k in MESSAGE_COLUMNS))
                kept_m += 1
            except (sqlite3.Error, KeyError):
                continue
    finally:
        db.execute("COMMIT")
    return len(kept_c), kept_m
