"""Issue 14, point 2: another user on the machine cannot stop Ember from starting.

The squatter is real: a process that listens on ``<tmp>/ember-<uid>/ember-app.sock`` before Ember
starts and answers "ok" to whatever it is sent, as the issue's tester did. As root it runs as
another user (uid 65534, "nobody") in a folder it owns; as any user the same squatter sits in a
folder that everybody may write in (mode 0777). The real desktop app then starts in a child process
with no EMBER_HOME (its folders under a fake HOME) and no XDG_RUNTIME_DIR, so it looks in the
temporary folder first.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engines import paths
from tests.helpers import wait_for

APP_CMD = [sys.executable, "-m", "desktop.launcher"]
NOBODY = 65534

SQUATTER = r"""
import os, socket, sys
folder, sock_path, log = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(folder, exist_ok=True)
os.chmod(folder, int(sys.argv[4], 8))
s = socket.socket(socket.AF_UNIX)
s.bind(sock_path)
os.chmod(sock_path, 0o777)
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.recv(100)
    c.sendall(b"ok\n")
    with open(log, "a") as f:
        f.write("answered\n")
    c.close()
"""


@pytest.fixture
def world():
    """A temporary folder every user may write in (like /tmp, sticky), outside pytest's private one."""
    d = Path(tempfile.mkdtemp(prefix="ember-squat-", dir="/tmp"))
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _app_env(world: Path) -> dict:
    home = world / "home"
    home.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("EMBER_HOME", "XDG_RUNTIME_DIR")}
    env.update(TMPDIR=str(world), HOME=str(home), XDG_DATA_HOME=str(home / "data"),
               XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"),
               XDG_CACHE_HOME=str(home / "cache"), QT_QPA_PLATFORM="offscreen", EMBER_NO_TRAY="1")
    return env


def _squat(world: Path, foreign: bool) -> tuple[subprocess.Popen, Path]:
    folder = world / f"ember-{os.getuid()}"
    answered = world / "squatter.log"
    preexec = None
    python = sys.executable
    if foreign:
        # another user cannot run a Python inside root's home: the system one (standard library only)
        python = shutil.which("python3", path="/usr/bin:/bin") or pytest.skip("no system python3 to run as nobody")

        def preexec():
            os.setgid(NOBODY)
            os.setuid(NOBODY)
    squatter = subprocess.Popen([python, "-c", SQUATTER, str(folder), str(folder / "ember-app.sock"),
                                 str(answered), "755" if foreign else "777"],
                                stdout=subprocess.PIPE, text=True, preexec_fn=preexec, cwd="/")
    assert squatter.stdout.readline().strip() == "listening"
    st = folder.stat()
    assert (st.st_uid == NOBODY) if foreign else (stat.S_IMODE(st.st_mode) == 0o777)
    return squatter, answered


@pytest.mark.parametrize("foreign", [True, False], ids=["another-user's-folder", "folder-anyone-can-write"])
def test_a_squatted_socket_does_not_stop_ember_from_starting(world, foreign):
    if foreign and os.getuid() != 0:
        pytest.skip("making a folder of another user needs root; the loose-folder case runs as any user")
    env = _app_env(world)
    squatter, answered = _squat(world, foreign)
    log = world / "home" / "state" / "ember" / "log" / "ember.log"
    app = subprocess.Popen(APP_CMD, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: app.poll() is not None or (log.exists() and "main window shown" in log.read_text()),
                 60, "the app's window")
        assert app.poll() is None, f"Ember exited instead of starting: {app.stdout.read()}"
        text = log.read_text()
        why = f"belongs to another user (uid {NOBODY})" if foreign else "can be written by other users (mode 777)"
        assert f"not using {world / f'ember-{os.getuid()}'} for Ember's socket: " in text
        assert why in text
        assert not answered.exists(), "Ember talked to the squatter"
        # and a second start of the real Ember still finds the first one, not the squatter
        second = subprocess.run(APP_CMD, env=env, capture_output=True, text=True, timeout=60)
        assert "already running" in second.stdout
        wait_for(lambda: "show request from a second start" in log.read_text(), 10, "the show request")
        assert not answered.exists()
    finally:
        app.send_signal(signal.SIGTERM)
        app.communicate(timeout=30)
        squatter.kill()
        squatter.wait()


def test_the_runtime_folder_prefers_xdg_runtime_dir_and_skips_unsafe_ones(tmp_path, monkeypatch, caplog):
    """Pure folder logic, in-process: XDG_RUNTIME_DIR first when it is private; a loose XDG folder and
    a loose ember folder are skipped with a warning; an older Ember's 0755 folder of ours is tightened."""
    monkeypatch.delenv("EMBER_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert paths.runtime_dir() == xdg / "ember"
    assert stat.S_IMODE((xdg / "ember").stat().st_mode) == 0o700
    assert paths.socket_path("ember-app") == xdg / "ember" / "ember-app.sock"

    os.chmod(xdg / "ember", 0o777)  # loose: someone may have put a socket in it
    assert paths.runtime_dir() == tmp_path / "tmp" / f"ember-{os.getuid()}"
    assert "can be written by other users (mode 777)" in caplog.text

    os.chmod(xdg, 0o777)
    os.chmod(tmp_path / "tmp" / f"ember-{os.getuid()}", 0o755)  # an older Ember's folder: ours, read-only to others
    assert paths.runtime_dir() == tmp_path / "tmp" / f"ember-{os.getuid()}"
    assert stat.S_IMODE((tmp_path / "tmp" / f"ember-{os.getuid()}").stat().st_mode) == 0o700

    link_target = tmp_path / "elsewhere"
    link_target.mkdir(mode=0o700)
    shutil.rmtree(tmp_path / "tmp" / f"ember-{os.getuid()}")
    os.symlink(link_target, tmp_path / "tmp" / f"ember-{os.getuid()}")
    assert paths.runtime_dir() == tmp_path / "cache" / "ember" / "run"
    assert "is a symbolic link" in caplog.text


def test_a_long_home_gets_a_short_private_socket_of_its_own(world, monkeypatch):
    """Socket addresses hold about 100 bytes: a deep EMBER_HOME puts its socket, named after the home,
    in a shorter private folder (never in a name Qt would put in /tmp for anyone to take)."""
    deep = world / ("d" * 60) / ("e" * 60)
    monkeypatch.setenv("EMBER_HOME", str(deep))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(world / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(world))
    p = paths.socket_path("ember-app")
    assert len(str(p)) <= paths.SOCKET_PATH_MAX
    assert p.parent == world / f"ember-{os.getuid()}"
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert p.name.startswith("ember-app-") and p.name.endswith(".sock")
    monkeypatch.setenv("EMBER_HOME", str(deep) + "2")
    assert paths.socket_path("ember-app") != p
