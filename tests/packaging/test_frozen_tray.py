"""The frozen app on a real X screen (Xvfb) with a real tray host (trayer): its icon is embedded
in the panel, a chat typed into its window starts the starter model through the frozen
engine-worker, and SIGTERM leaves no engine behind."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tests.packaging.conftest import BUILD_TIMEOUT, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT)]

TOOLS = ("Xvfb", "trayer", "xwininfo", "xdotool")


def _wait(predicate, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _free_display() -> int:
    for n in range(71, 200):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


def _tree(display: str) -> str:
    return subprocess.run(["xwininfo", "-root", "-tree"], env={"DISPLAY": display, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True).stdout


def embedded_in_trayer(tree: str, wm_class: str) -> bool:
    """True when a window with ``wm_class`` sits below trayer's ("panel" "trayer") window."""
    panel_indent = None
    for line in tree.splitlines():
        indent = len(line) - len(line.lstrip())
        if '("panel" "trayer")' in line:
            panel_indent = indent
            continue
        if panel_indent is not None:
            if line.strip() and indent <= panel_indent and re.match(r"\s*0x", line):
                panel_indent = None
            elif wm_class in line:
                return True
    return False


def _stop(proc: subprocess.Popen | None) -> None:
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def x_with_tray():
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing {missing}: `make test` installs them (APT_TEST)")
    n = _free_display()
    display = f":{n}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trayer = None
    try:
        _wait(lambda: Path(f"/tmp/.X11-unix/X{n}").exists(), 15, "Xvfb")
        trayer = subprocess.Popen(["trayer", "--edge", "top", "--align", "right", "--widthtype", "request",
                                   "--height", "32", "--SetDockType", "true", "--expand", "true",
                                   "--transparent", "false"], env={"DISPLAY": display, "PATH": "/usr/bin:/bin"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: '("panel" "trayer")' in _tree(display), 15, "trayer's panel")
        yield display
    finally:
        _stop(trayer)
        _stop(xvfb)


def _workers(app_pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(app_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if "engine-worker" in " ".join(k.cmdline())]


def test_frozen_app_tray_chat_and_clean_quit(bundle, user_home, x_with_tray):
    exe = bundle / "ember"
    env = clean_env(user_home, DISPLAY=x_with_tray)
    app = subprocess.Popen([str(exe)], env=env, cwd=user_home.parent, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    engine_pids: list[int] = []
    try:
        _wait(lambda: app.poll() is not None or embedded_in_trayer(_tree(x_with_tray), '("ember" "Ember")'),
              60, "Ember's icon in trayer's panel")
        assert app.poll() is None, app.stdout.read()

        # a second start hands over to the running one, which shows its chat window
        again = subprocess.run([str(exe)], env=env, cwd=user_home.parent, capture_output=True, text=True,
                               timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr

        xenv = {"DISPLAY": x_with_tray, "PATH": "/usr/bin:/bin"}

        def chat_window():
            """The app's largest visible window (the tray's own windows are tiny)."""
            r = subprocess.run(["xdotool", "search", "--onlyvisible", "--pid", str(app.pid)], env=xenv,
                               capture_output=True, text=True)
            best = None
            for wid in r.stdout.split():
                g = subprocess.run(["xdotool", "getwindowgeometry", "--shell", wid], env=xenv,
                                   capture_output=True, text=True).stdout
                geo = dict(line.split("=", 1) for line in g.split())
                area = int(geo.get("WIDTH", 0)) * int(geo.get("HEIGHT", 0))
                if area > 100 * 100 and (best is None or area > best[1]):
                    best = (wid, area, geo)
            return best
        win, _, geo = _wait(chat_window, 30, "the chat window")

        def xdo(*args):
            subprocess.run(["xdotool", *args], env=xenv, check=True, timeout=20)

        # No window manager on Xvfb: focus the window, and on a retry click into the message box
        # (the lower part of the window), then type and press Enter.
        workers = []
        for attempt in range(3):
            xdo("windowfocus", "--sync", win)
            if attempt:
                w, h = int(geo["WIDTH"]), int(geo["HEIGHT"])
                xdo("mousemove", "--window", win, str(int(w * 0.6)), str(int(h * 0.84)), "click", "1")
            time.sleep(0.5)
            xdo("type", "--delay", "20", "Hello")
            xdo("key", "Return")
            try:
                workers = _wait(lambda: _workers(app.pid), 20, "the frozen engine-worker child")
                break
            except AssertionError:
                continue
        assert workers, "typing a message into the chat window started no engine"
        engine_pids = [w.pid for w in workers]
        assert all(w.exe() == str(exe) for w in workers)  # the bundle's own executable, no Python
        shots = ROOT / "test-artifacts" / "packaging"  # git-ignored: a screenshot for people to look at
        shots.mkdir(parents=True, exist_ok=True)
        subprocess.run(["import", "-window", "root", str(shots / "frozen-tray-chat.png")], env=xenv, timeout=30)
    finally:
        if app.poll() is None:
            app.send_signal(signal.SIGTERM)
        try:
            code = app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
            raise AssertionError("the frozen app did not quit on SIGTERM")
    assert code == 0, app.stdout.read()
    _wait(lambda: not [p for p in engine_pids if psutil.pid_exists(p) and
                       psutil.Process(p).status() != psutil.STATUS_ZOMBIE], 15,
          "the engine child to exit after the app quit")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"{exe} engine-worker" not in ps
