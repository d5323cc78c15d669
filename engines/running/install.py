"""Installing what an engine needs, from a diagnosis' "Install …" fix: the command for the engine's
own interpreter, and running it with its output line by line.

A fix says its command the way people type it (``pip install xllamacpp``); Ember runs pip
of the interpreter that will run the engine (``engine_python.<engine>``, else Ember's own),
so the package lands where the engine will look for it. A command Ember should not run
itself (vLLM's "in its own environment" while none is set; a packaged Ember without
Python) is shown with the reason, to copy.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import shlex
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from engines.running import engine_env

log = logging.getLogger(__name__)

TAIL_LINES = 20
#: A remark after the command, as the engines' install commands add one: "pip install vllm   (in its own …)"
_REMARK = re.compile(r"\s{2,}\((?P<remark>.*)\)\s*$")


@dataclass(frozen=True)
class InstallCommand:
    """What to show, copy and run for one install."""

    display: str                          # the command, for the eyes and the clipboard
    argv: tuple[str, ...] | None          # what Ember runs; None when it leaves that to the user
    interpreter: str | None = None        # the Python it installs into
    why_not: str | None = None            # why Ember does not run it itself

    @property
    def runnable(self) -> bool:
        return self.argv is not None


@dataclass(frozen=True)
class InstallOutcome:
    """How a run ended: the exit status, the last lines, one sentence for people."""

    code: int | None
    cancelled: bool
    tail: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.cancelled

    @property
    def sentence(self) -> str:
        if self.cancelled:
            return "The installation was cancelled."
        if self.ok:
            return f"Installed in {self.seconds:.0f} s."
        return f"The installation failed (exit status {self.code})."


def command_for(text: str, engine: str | None) -> InstallCommand:
    """The command of a fix's note (``pip install …``) for the interpreter that runs ``engine``."""
    text = text.strip()
    remark = _REMARK.search(text)
    command = text[: remark.start()] if remark else text
    try:
        words = shlex.split(command)
    except ValueError:
        return InstallCommand(text, None, None, "it is not a command Ember can read")
    configured = engine_env.configured_python(engine) if engine else None
    interpreter = configured or engine_env.own_python()
    if words[:1] == ["pip"]:
        rest = words[1:]
    elif len(words) > 3 and words[1:3] == ["-m", "pip"]:
        interpreter, rest = words[0], words[3:]
    else:
        return InstallCommand(text, None, None, "it is not a pip command")
    if remark and not configured:  # "in its own environment": not into Ember's
        return InstallCommand(command.strip(), None, None, remark.group("remark"))
    if interpreter is None:
        return InstallCommand(command.strip(), None, None,
                              "this packaged Ember has no Python of its own to install into")
    argv = (interpreter, "-m", "pip", *rest)
    return InstallCommand(shlex.join(argv), argv, interpreter)


def run(cmd: InstallCommand, on_line: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None) -> InstallOutcome:
    """Run ``cmd`` (blocking; call it off the GUI thread), each output line to ``on_line``.

    ``cancel`` set: the child is terminated (then killed). Afterwards the engines' installed
    state is asked afresh."""
    if cmd.argv is None:
        raise ValueError(f"not a command Ember runs: {cmd.display} ({cmd.why_not})")
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    env = dict(os.environ, PIP_PROGRESS_BAR="off", PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    log.info("installing: %s", cmd.display)
    proc = subprocess.Popen(list(cmd.argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, env=env)
    watcher = None
    if cancel is not None:
        def watch() -> None:
            while proc.poll() is None:
                if cancel.wait(0.2):
                    _stop(proc)
                    return
        watcher = threading.Thread(target=watch, name="install-cancel", daemon=True)
        watcher.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        if on_line is not None:
            on_line(line)
    code = proc.wait()
    if watcher is not None:
        watcher.join(1.0)
    engine_env.probe.cache_clear()  # what is installed may have changed: ask afresh
    importlib.invalidate_caches()
    outcome = InstallOutcome(code, bool(cancel is not None and cancel.is_set()), list(tail),
                             time.monotonic() - started)
    log.info("install ended: %s", outcome.sentence)
    return outcome


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, a wait, then SIGKILL: only the child this module started."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
