"""Issue 14, point 5: the desktop app starts on a full disk and says what it cannot save.

The disk is a real 4 MiB tmpfs filled to the last byte (root mounts it; elsewhere these tests are
skipped, saying so). The app used to die with ``sqlite3.OperationalError: database or disk is full``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from PySide6.QtWidgets import QApplication

from desktop.app import EmberApp


@pytest.fixture
def full_home(tmp_path, monkeypatch):
    mnt = tmp_path / "full"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if ok.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here: {ok.stderr.strip()}")
    home = mnt / "home"
    home.mkdir()
    with open(mnt / "filler", "wb") as f:  # every byte taken
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    monkeypatch.setenv("EMBER_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    yield home
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_the_app_starts_on_a_full_disk_and_the_chat_says_chats_are_not_saved(qtbot, full_home):
    app = EmberApp(QApplication.instance(), use_tray=False)
    qtbot.addWidget(app.chat)
    try:
        assert app.chat.isVisible()
        banner = app.chat.history_banner
        assert banner.isVisible()
        data = full_home / "data"
        assert banner.label.text() == (
            f"Ember cannot save chats in {data}: There is not enough space on the disk at {data} for your "
            "chats: 0 bytes free. Free some space there and try again. Until then, chats are kept only while "
            "Ember runs.")
        # the chat still works for this session
        conv = app.chat.store.create("kept in memory")
        app.chat.store.add_message(conv.id, "user", "hello")
        assert [m.content for m in app.chat.store.messages(conv.id)] == ["hello"]
    finally:
        app.manager.stop_all()
        app.chat.close()
        QApplication.instance().setQuitOnLastWindowClosed(True)


def test_the_real_app_stays_up_on_a_full_disk(full_home):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", EMBER_NO_TRAY="1")
    app = subprocess.Popen([sys.executable, "-m", "desktop.launcher"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    time.sleep(8)  # the log cannot be written, so there is no "window shown" line to wait for
    alive = app.poll() is None
    app.send_signal(signal.SIGTERM)
    out, _ = app.communicate(timeout=30)
    assert alive, out
    assert app.returncode == 0, out
    assert "Traceback" not in out and "sqlite3" not in out
    assert "chat history: Ember cannot save chats in" in out
    assert f"the log file {full_home / 'logs' / 'ember.log'} cannot be written, so logging to it stopped" in out
    assert "local API not started: There is not enough space on the disk at" in out
