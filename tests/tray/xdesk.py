"""Driving the real app on a real X display: Xvfb, trayer as the XEmbed tray host, xdotool,
ImageMagick's ``import`` for screenshots. Shared by the tests in this folder (fixtures in conftest)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers import ROOT, screenshot_dir, wait_for

TOOLS = ("Xvfb", "trayer", "xwininfo", "xdotool", "import")
MISSING = [t for t in TOOLS if shutil.which(t) is None]
SKIP_REASON = (f"needs {', '.join(MISSING)} (make test installs xvfb trayer x11-utils xdotool imagemagick)"
               if MISSING else "")

#: the app as `python -m`, and as the installed ``ember`` console script where there is one
APP_CMD = [sys.executable, "-m", "desktop.launcher"]
EMBER_SCRIPT = Path(sys.executable).parent / "ember"


def x(env, *argv: str) -> str:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20).stdout


def start_app(env, cmd: list[str] | None = None) -> subprocess.Popen:
    """The app as a child process; this checkout's modules first (also for the engines it starts)."""
    env = dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return subprocess.Popen(cmd or APP_CMD, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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


def windows_named(env, pid: int, name: str) -> list[str]:
    return [wid for wid in visible_windows(env, pid) if x(env, "xdotool", "getwindowname", wid).strip() == name]


def screenshot(env, name: str, window: str | None = None) -> Path:
    path = screenshot_dir() / f"{name}.png"
    x(env, "import", "-window", window or "root", str(path))
    return path


def engine_processes(pid: int) -> list[psutil.Process]:
    """The engine workers the app at ``pid`` started (they run in their own sessions, as its children)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "engines.running.worker" in cmd or "engine-worker" in cmd:
            found.append(child)
    return found


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


class Desk:
    """The app under test on the X display: its tray icon and menu, its windows.

    Under Xvfb without a window manager a click, an activation or the keyboard focus can arrive late
    on a loaded machine; each step waits for what the user would wait for (the menu on screen and
    still open, the window shown and focused) and a menu that vanished is opened again, as a hand
    would. What is checked is still only what the user sees happen."""

    ITEM = 22  # a menu item's height (Fusion style, DejaVu Sans), for the rows before a separator

    def __init__(self, env: dict, app: subprocess.Popen):
        self.env, self.app = env, app
        w, h, ax, ay = wait_for(lambda: embedded_icon(x(env, "xwininfo", "-root", "-tree")), 60,
                                "Ember's icon inside trayer's panel")
        self.icon_center = [str(ax + w // 2), str(ay + h // 2)]
        self.icon_windows = set(visible_windows(env, app.pid))  # before any window is opened: the icon's

    def settle(self, busy_percent: float = 25.0, timeout: float = 60.0) -> None:
        """Wait until the app is idle (under ``busy_percent`` of a core over half a second), as a user
        waits for a busy window: on a loaded machine a click sent while the app still works through
        earlier events is answered many seconds later, and a second click then closes the menu."""
        proc = psutil.Process(self.app.pid)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if proc.cpu_percent(interval=0.5) < busy_percent:
                    return
            except psutil.NoSuchProcess:
                return

    def geometry(self, wid: str) -> tuple[int, int, int, int] | None:
        """(left, top, width, height) of a window on screen, None once it is gone."""
        found = re.findall(r"(?:Position|Geometry): (\d+)[,x](\d+)", x(self.env, "xdotool", "getwindowgeometry", wid))
        if len(found) != 2 or wid not in visible_windows(self.env, self.app.pid):
            return None
        (left, top), (width, height) = [tuple(map(int, m)) for m in found]
        return left, top, width, height

    def new_menu(self, before: set[str]) -> tuple[str, tuple] | None:
        """A window that appeared since ``before`` as tall as the menu (not the icon's tooltip, which
        also appears while the pointer rests on the icon), with its geometry."""
        for wid in set(visible_windows(self.env, self.app.pid)) - before:
            geometry = self.geometry(wid)
            if geometry and geometry[3] > 100:
                return wid, geometry
        return None

    def open_menu(self, what: str, tries: int = 3) -> tuple[str, tuple]:
        """Right click on the icon (the pointer coming from elsewhere, as a hand's would); the menu's
        window and geometry once it is on screen and stays there."""
        before = set(visible_windows(self.env, self.app.pid))
        seen = []
        for attempt in range(tries):
            if attempt:
                x(self.env, "xdotool", "key", "Escape")  # a menu Qt still counts as open would eat the click
            self.settle()
            icon = embedded_icon(x(self.env, "xwininfo", "-root", "-tree"))
            if icon:  # where the panel has it now
                w, h, ax, ay = icon
                self.icon_center = [str(ax + w // 2), str(ay + h // 2)]
            x(self.env, "xdotool", "mousemove", "600", "780")
            time.sleep(0.3)
            x(self.env, "xdotool", "mousemove", *self.icon_center)
            time.sleep(0.3)
            x(self.env, "xdotool", "click", "3")
            try:
                wid, _ = wait_for(lambda: self.new_menu(before), 30, f"the tray menu ({what})")
            except AssertionError:
                seen.append("nothing opened in 30 s")
                continue
            time.sleep(0.5)
            geometry = self.geometry(wid)
            if geometry:
                return wid, geometry
            seen.append("a menu opened and closed at once")
        raise AssertionError(f"the tray menu ({what}) did not open after {tries} right clicks: {'; '.join(seen)}")

    def click_item(self, row: int, what: str) -> float:
        """Open the tray menu and click an item: ``row`` counts items from the top (0: Chat, 1: Models…),
        or from the bottom when negative (-1: Quit). With the mouse: without a window manager the
        keyboard stays with the last window shown, so keys would land there. Returns when it clicked."""
        wid, (left, top, width, height) = self.open_menu(what)
        half = self.ITEM // 2
        y = top + half + self.ITEM * row if row >= 0 else top + height - half - 1 + self.ITEM * (row + 1)
        x(self.env, "xdotool", "mousemove", str(left + width // 2), str(y))
        time.sleep(0.3)
        x(self.env, "xdotool", "click", "1")
        clicked = time.monotonic()
        wait_for(lambda: wid not in visible_windows(self.env, self.app.pid), 10, f"the menu to close ({what})")
        return clicked

    def open_window(self, row: int, title: str, tries: int = 3) -> str:
        """Tray menu item ``row`` opens the window ``title``; it is shown and has the keyboard focus."""
        for _ in range(tries):
            self.click_item(row, title)
            try:
                wid = self.window(title, 30)
            except AssertionError:
                continue  # the click landed while the menu was going away: the menu again
            try:
                wait_for(lambda: x(self.env, "xdotool", "getwindowfocus").strip() == wid, 15, f"{title} focused")
            except AssertionError:
                pass  # shown but not focused: the steps after it focus it themselves
            return wid
        raise AssertionError(f"the tray menu's item for {title!r} did not open it")

    def window(self, title: str, timeout: float = 60) -> str:
        """A visible top-level window of the app with this title (the tray icon's own window, also
        named "Ember", does not count)."""
        def found() -> list[str]:
            return [w for w in windows_named(self.env, self.app.pid, title) if w not in self.icon_windows]
        return wait_for(found, timeout, f"the window {title!r}")[0]
