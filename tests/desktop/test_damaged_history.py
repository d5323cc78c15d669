"""Issue 14, point 4: a damaged chat history never stops the desktop app.

Two kinds of damage, both real files: one that is not a database at all (what the issue's tester
wrote: the app died with ``sqlite3.DatabaseError: file is not a database``), and a real history of
five conversations with one page in the middle overwritten, where SQLite can still read most rows.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest
from PySide6.QtWidgets import QApplication

from desktop.app import EmberApp
from engines import paths
from engines.chat.conversations import Store
from tests.helpers import wait_for

GARBAGE = b"This is not a database, just text that happens to sit where the chats should be.\n" * 50


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("EMBER_HOME", str(h))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return h


@pytest.fixture
def start_app(qtbot):
    apps = []

    def start() -> EmberApp:
        app = EmberApp(QApplication.instance(), use_tray=False)
        apps.append(app)
        qtbot.addWidget(app.chat)
        return app

    yield start
    for app in apps:
        app.manager.stop_all()
        app.chat.close()
    QApplication.instance().setQuitOnLastWindowClosed(True)


def _history(home) -> "os.PathLike":
    return paths.data_dir() / "conversations.sqlite3"


def _damaged_copies(folder) -> list:
    return sorted(p for p in folder.iterdir() if p.name.startswith("conversations.sqlite3.damaged-")
                  and not p.name.endswith(("-wal", "-shm")))


def test_a_file_that_is_not_a_database_is_moved_aside_and_the_app_starts(home, start_app, caplog, screenshot):
    db = _history(home)
    db.write_bytes(GARBAGE)
    with caplog.at_level(logging.WARNING):
        app = start_app()
    chat = app.chat
    assert chat.isVisible()
    [kept] = _damaged_copies(db.parent)
    assert kept.read_bytes() == GARBAGE  # the old file is kept as it was, under a dated name
    banner = chat.history_banner
    assert banner.isVisible()
    assert banner.label.text() == (
        "Your chat history could not be read (it is not a database file), so Ember started a new one. "
        f"The damaged file is kept at {kept}. Nothing could be recovered from it.")
    assert banner.button.text() == "Show folder" and banner.folder == str(db.parent)
    assert f"moved to {kept}" in caplog.text  # the log says where, too
    screenshot(chat, "chat-history-recovered")
    # the fresh history works: a conversation is saved and listed
    conv = chat.store.create("after the repair")
    chat.store.add_message(conv.id, "user", "hello again")
    chat.refresh_conversations()
    assert chat.conversations.list.count() == 1
    banner.second_button.click()
    assert not banner.isVisible()


def test_readable_conversations_are_salvaged_from_a_damaged_history(home, start_app):
    db = _history(home)
    store = Store(db)
    for c in range(5):
        conv = store.create(f"chat {c}")
        for i in range(300):
            store.add_message(conv.id, "user" if i % 2 == 0 else "assistant", f"message {c}-{i} " + "x" * 200)
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    with open(db, "r+b") as f:  # one page in the middle of the messages is lost
        f.seek(4096 * 40)
        f.write(b"\xff" * 4096)
    app = start_app()
    notice = app.chat.store.notice
    assert notice is not None and notice.kind == "recovered" and notice.conversations == 5
    assert 1400 <= notice.messages < 1500  # all but the rows on the damaged page
    assert "5 conversation(s) with" in app.chat.history_banner.label.text()
    assert app.chat.conversations.list.count() == 5
    titles = {c.title for c in app.chat.store.list()}
    assert titles == {f"chat {c}" for c in range(5)}
    [kept] = _damaged_copies(db.parent)
    assert kept.stat().st_size > 400_000


def test_the_real_app_starts_with_a_damaged_history(tmp_path):
    """The issue's own reproduction: the desktop app as a process, with a history that is not a database."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "conversations.sqlite3").write_bytes(GARBAGE)
    env = dict(os.environ, EMBER_HOME=str(home), QT_QPA_PLATFORM="offscreen", EMBER_NO_TRAY="1")
    log = home / "logs" / "ember.log"
    app = subprocess.Popen([sys.executable, "-m", "desktop.launcher"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: app.poll() is not None or (log.exists() and "main window shown" in log.read_text()),
                 60, "the app's window")
        assert app.poll() is None, app.stdout.read()
        assert "Your chat history could not be read (it is not a database file)" in log.read_text()
    finally:
        app.send_signal(signal.SIGTERM)
        out, _ = app.communicate(timeout=30)
    assert app.returncode == 0, out
    assert "Traceback" not in out
