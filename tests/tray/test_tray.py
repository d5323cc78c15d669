"""The real tray: Ember as a real process under Xvfb with trayer as the XEmbed tray host.

Checks what a user sees: the icon is embedded in the panel, its menu opens on a
click, and without a tray host a normal window appears instead.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import screenshot_dir, wait_for

TOOLS = ("Xvfb", "trayer", "xwininfo", "xdotool", "import")
missing = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (make test installs "
                                 "xvfb trayer x11-utils xdotool imagemagick)")]
APP_CMD = [sys.executable, "-m", "desktop.launcher"]




def x(env, *argv: str) -> str:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20).stdout


@pytest.fixture
def display(tmp_path):
    """A fresh Xvfb screen; yields the environment to run X clients on it."""
    for n in range(60 + os.getpid() % 200, 400):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, DISPLAY=f":{n}", QT_QPA_PLATFORM="xcb", EMBER_HOME=str(tmp_path / "home"))
    env.pop("WAYLAND_DISPLAY", None)
    try:
        wait_for(lambda: Path(f"/tmp/.X11-unix/X{n}").exists(), 15, "Xvfb")
        yield env
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def trayer(display):
    proc = subprocess.Popen(["trayer", "--edge", "bottom", "--align", "right", "--widthtype", "request",
                             "--height", "32", "--SetDockType", "true", "--transparent", "false"],
                            env=display, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: '("panel" "trayer")' in x(display, "xwininfo", "-root", "-tree"), 15, "trayer's panel")
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def start_app(env):
    return subprocess.Popen(APP_CMD, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_app(proc) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def embedded_icon(tree: str) -> tuple[int, int, int, int] | None:
    """Geometry (w, h, abs x, abs y) of an Ember window nested under trayer's panel, if any."""
    lines = tree.splitlines()
    for i, line in enumerate(lines):
        if '("panel" "trayer")' not in line:
            continue
        indent = len(line) - len(line.lstrip())
        for child in lines[i + 1:]:
            if child.strip() and len(child) - len(child.lstrip()) <= indent:
                break
            if re.search(r'\("ember" "Ember"\)', child, re.I):
                m = re.search(r"(\d+)x(\d+)\+-?\d+\+-?\d+\s+\+(-?\d+)\+(-?\d+)", child)
                if m:
                    return tuple(int(v) for v in m.groups())
    return None


def visible_windows(env, pid: int) -> list[str]:
    return x(env, "xdotool", "search", "--onlyvisible", "--pid", str(pid)).split()


def test_tray_icon_is_embedded_and_its_menu_opens(display, trayer):
    app = start_app(display)
    try:
        icon = wait_for(lambda: embedded_icon(x(display, "xwininfo", "-root", "-tree")), 60,
                        "Ember's icon inside trayer's panel")
        w, h, ax, ay = icon
        assert w >= 16 and h >= 16
        center = [str(ax + w // 2), str(ay + h // 2)]
        before = set(visible_windows(display, app.pid))
        x(display, "xdotool", "mousemove", *center)
        x(display, "xdotool", "click", "3")  # right click: the context menu
        menu = wait_for(lambda: set(visible_windows(display, app.pid)) - before, 15, "the tray menu to open")
        geometry = x(display, "xdotool", "getwindowgeometry", sorted(menu)[0])
        size = re.search(r"Geometry: (\d+)x(\d+)", geometry)
        assert size and int(size.group(2)) > 100, geometry  # a menu with its items, not a stray pixel
        time.sleep(0.3)
        x(display, "import", "-window", "root", "-crop", "440x260+840+540", "+repage",
          str(screenshot_dir() / "tray-menu.png"))
        x(display, "xdotool", "key", "Escape")
        wait_for(lambda: not (set(visible_windows(display, app.pid)) & menu), 10, "the menu to close")

        x(display, "xdotool", "click", "1")  # left click: the chat window
        chat = wait_for(lambda: [wid for wid in visible_windows(display, app.pid)
                                 if x(display, "xdotool", "getwindowname", wid).strip() == "Ember"], 30,
                        "the chat window after a click on the icon")
        assert chat
        before = set(visible_windows(display, app.pid))
        x(display, "xdotool", "mousemove", *center)
        x(display, "xdotool", "click", "3")
        wait_for(lambda: set(visible_windows(display, app.pid)) - before, 15, "the tray menu to open again")
        assert app.poll() is None
        x(display, "xdotool", "key", "Up", "Return")  # the last item: Quit
        wait_for(lambda: app.poll() is not None, 30, "Quit from the tray menu to end the app")
    finally:
        out = stop_app(app)
    assert app.returncode == 0, out


def test_without_a_tray_host_a_normal_window_appears(display):
    app = start_app(display)
    try:
        windows = wait_for(lambda: visible_windows(display, app.pid), 60, "Ember's window")
        name = x(display, "xdotool", "getwindowname", windows[0]).strip()
        assert name == "Ember"
        time.sleep(0.3)
        x(display, "import", "-window", windows[0], str(screenshot_dir() / "fallback-window-x11.png"))
    finally:
        out = stop_app(app)
    assert app.returncode == 0, out
