"""A fresh X screen (Xvfb) and a tray host (trayer) for the tests that drive the real app."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.tray.xdesk import x


@pytest.fixture
def display(tmp_path):
    """A fresh Xvfb screen; yields the environment to run X clients on it (EMBER_HOME: tmp/home)."""
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
