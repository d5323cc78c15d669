"""Issue 14, point 3: what Ember writes for the user is theirs alone, whatever the umask.

Under the usual umask (022) every writer of Ember's runs for real in a fresh EMBER_HOME: settings,
the API key, the chat history (with SQLite's -wal and -shm files), the download queue and its
records, the local model list, a model's saved preferences, the remotes list, an engine's log (a
real child process), the app log and the starter model itself. Then every folder under the home
must be 0700 and every file 0600. Files an older Ember left readable are tightened when opened.
"""
from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from engines import logfile, model_prefs, paths, settings
from engines.chat import conversations, remotes
from engines.gateway import keys
from engines.models import downloads, records, store
from engines.running import supervisor


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def home(tmp_path, monkeypatch, umask_022):
    h = tmp_path / "home"
    monkeypatch.setenv("EMBER_HOME", str(h))
    return h


def _loose(root: Path) -> list[str]:
    """Entries under ``root`` that another user could read or enter."""
    out = []
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.stat().st_mode)
        want = paths.PRIVATE_DIR if p.is_dir() else paths.PRIVATE_FILE
        if p != root and mode != want:
            out.append(f"{p.relative_to(root)} {mode:o}")
    return out


def test_everything_ember_writes_is_private_under_umask_022(home, starter_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the download below fails at once, offline
    settings.set("reply_limit", 512)
    keys.get()
    history = conversations.Store()
    conv = history.create("a private chat")
    history.add_message(conv.id, "user", "something personal")
    assert {p.name for p in paths.data_dir().iterdir()} >= {"conversations.sqlite3", "conversations.sqlite3-wal",
                                                          "conversations.sqlite3-shm"}
    manager = downloads.DownloadManager(max_parallel=1)
    manager.add("no-such/model-GGUF:x.gguf")  # fails at once (no hub here), and the queue is saved
    manager.wait(30)
    records.save("some/model", "some/model", "0" * 40, str(starter_path), [])
    store.add_local(starter_path, "mine")
    model_prefs.save("mine", model_prefs.ModelPrefs("llamacpp", {"n_ctx": 2048}))
    remotes.add("lab", "http://127.0.0.1:9/v1")
    log_path = supervisor.launch_log_path("mine", "llamacpp")
    proc = supervisor.EngineProcess(supervisor.Command([sys.executable, "-c", "print('engine says hi')"]),
                                    "mine", "llamacpp", "127.0.0.1", 9, "key", log_path)
    proc.spawn()
    proc.proc.wait(30)
    handler = logfile.PrivateFileHandler(paths.log_dir() / "ember.log")
    logging.getLogger("test.private").addHandler(handler)
    logging.getLogger("test.private").error("a line for the app log")
    handler.close()
    history.close()
    assert "engine says hi" in log_path.read_text()
    assert (paths.log_dir() / "ember.log").read_text().strip().endswith("a line for the app log")
    assert _loose(home) == []


def test_the_assembled_starter_is_private(home):
    path = store.ensure_starter()
    assert stat.S_IMODE(path.stat().st_mode) == paths.PRIVATE_FILE
    assert stat.S_IMODE(path.parent.stat().st_mode) == paths.PRIVATE_DIR
    assert _loose(home) == []


def test_files_and_folders_an_older_ember_left_open_are_tightened(home):
    data = home / "data"
    data.mkdir(parents=True, mode=0o755)
    os.chmod(data, 0o755)
    db = data / "conversations.sqlite3"
    conversations.Store(db).close()
    os.chmod(db, 0o644)
    conversations.Store().close()
    assert stat.S_IMODE(db.stat().st_mode) == paths.PRIVATE_FILE
    assert stat.S_IMODE(data.stat().st_mode) == paths.PRIVATE_DIR
