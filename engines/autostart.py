"""Start Ember at login, only when the user asks: an XDG autostart entry on Linux,
a LaunchAgent on macOS. Off by default; enabling writes one file, disabling removes it."""
from __future__ import annotations

import logging
import os
import plistlib
import shlex
import shutil
import sys
from pathlib import Path

from engines import paths

log = logging.getLogger(__name__)

AGENT_ID = "io.github.ember"


class AutostartUnsupported(RuntimeError):
    """This OS has no start-at-login mechanism Ember knows."""


def command() -> list[str]:
    """How to start the app: the frozen executable, the `ember` script, or this Python."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    script = Path(sys.executable).with_name("ember")
    if script.exists():
        return [str(script)]
    found = shutil.which("ember")
    return [found] if found else [sys.executable, "-m", "engines.cli"]


def entry_path() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "LaunchAgents" / f"{AGENT_ID}.plist"
    if sys.platform.startswith("linux") or os.name == "posix":
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "autostart" / "ember.desktop"
    raise AutostartUnsupported(f"start at login is not supported on {sys.platform}")


def desktop_entry(argv: list[str]) -> str:
    return ("[Desktop Entry]\n"
            "Type=Application\n"
            "Name=Ember\n"
            "Comment=Run large language models on this computer\n"
            f"Exec={shlex.join(argv)}\n"
            "Icon=ember\n"
            "Terminal=false\n"
            "Categories=Utility;\n"
            "X-GNOME-Autostart-enabled=true\n")


def launch_agent(argv: list[str]) -> str:
    return plistlib.dumps({"Label": AGENT_ID, "ProgramArguments": argv, "RunAtLoad": True,
                           "ProcessType": "Interactive"}).decode()


def enabled() -> bool:
    try:
        return entry_path().exists()
    except AutostartUnsupported:
        return False


def enable(argv: list[str] | None = None) -> Path:
    argv = argv or command()
    p = entry_path()
    text = launch_agent(argv) if p.suffix == ".plist" else desktop_entry(argv)
    paths.atomic_write_text(p, text)
    log.info("start at login enabled: %s", p)
    return p


def disable() -> bool:
    """Remove the entry; True if there was one."""
    try:
        p = entry_path()
        p.unlink()
    except (FileNotFoundError, AutostartUnsupported):
        return False
    log.info("start at login disabled: %s", p)
    return True


def set_enabled(on: bool) -> None:
    enable() if on else disable()
