"""EngineProcess: one engine in a child process, from spawn to stop.

Start spawns the child on 127.0.0.1 and a free port with a fresh API key,
waits for ``/health`` while watching for an early exit, and keeps every
line the child prints in a per-launch log file. Stop is SIGTERM, a grace
period, then SIGKILL, and only for the process we started. The child dies
with us even after ``kill -9`` (see ``engines.running.worker``). Once it is
ready, :meth:`EngineProcess.watch` reports an exit nobody asked for (a crash,
the out-of-memory killer, ``kill -9``) the moment it happens.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import httpx

from engines import paths

log = logging.getLogger(__name__)

TAIL_LINES = 20


class Stop(enum.Enum):
    OK = "stopped"
    KILLED = "killed after the grace period"
    NOT_RUNNING = "was not running"


@dataclass
class ExitStatus:
    """How a child ended: code or signal, in words for people."""

    code: int | None
    signal: int | None = None

    @classmethod
    def from_returncode(cls, rc: int | None) -> "ExitStatus | None":
        if rc is None:
            return None
        return cls(None, -rc) if rc < 0 else cls(rc)

    @property
    def sentence(self) -> str:
        if self.signal:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"was killed by {name}"
        return f"exited with status {self.code}"


@dataclass
class Command:
    """What to spawn: argv, extra environment, and stdin's first line (secrets go there)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stdin_line: str | None = None
    health_path: str = "/health"
    display: str = ""  # the command for the log, secrets removed


class EngineStartError(RuntimeError):
    """The engine did not become ready; carries the evidence for diagnosis."""

    def __init__(self, reason: str, status: ExitStatus | None, log_tail: list[str], log_path: Path,
                 timed_out: bool = False):
        self.reason, self.status, self.log_tail, self.log_path, self.timed_out = (
            reason, status, log_tail, log_path, timed_out)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        tail = "\n".join("    " + l for l in self.log_tail[-TAIL_LINES:])
        return f"{self.reason}\n  last lines of the engine log ({self.log_path}):\n{tail}"


class EngineExited(RuntimeError):
    """A ready engine's process ended by itself (crash, out-of-memory killer, ``kill -9``)."""

    def __init__(self, model: str, engine: str, status: ExitStatus, log_tail: list[str], log_path: Path):
        self.model, self.engine, self.status, self.log_tail, self.log_path = model, engine, status, log_tail, log_path
        super().__init__(self.message)

    @property
    def reason(self) -> str:
        """The short form, for a menu or a tooltip: "was killed by SIGKILL"."""
        return self.status.sentence

    @property
    def message(self) -> str:
        return f"The {self.engine} engine of {self.model} {self.status.sentence}."


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def new_api_key() -> str:
    return "ember-" + secrets.token_urlsafe(24)


def worker_argv(*args: str) -> list[str]:
    """How to run our own worker: the frozen executable re-invokes itself."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "engine-worker", *args]
    return [sys.executable, "-m", "engines.running.worker", *args]


def launch_log_path(model: str, engine: str) -> Path:
    folder = paths.private_dir(paths.log_dir() / "engines")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)[:60]
    return folder / f"{stamp}-{safe}-{engine}.log"


class EngineProcess:
    """A launched engine. Create with :meth:`start`; then ``base_url`` and ``api_key``."""

    def __init__(self, command: Command, model: str, engine: str, host: str, port: int, api_key: str,
                 log_path: Path, meta: dict | None = None):
        self.command, self.model, self.engine = command, model, engine
        self.host, self.port, self.api_key, self.log_path = host, port, api_key, log_path
        self.meta = dict(meta or {})
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.ready_at = 0.0
        self._log_file = None
        self._lock = threading.Lock()
        self._stopping = False  # set by stop/kill: an exit we asked for is not reported by watch

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- start ------------------------------------------------------------------------

    def spawn(self) -> None:
        self._log_file = os.fdopen(paths.open_private(self.log_path), "ab", buffering=0)  # 0600: prompts may be in it
        header = {"model": self.model, "engine": self.engine, "port": self.port,
                  "command": self.command.display or " ".join(self.command.argv), "meta": self.meta}
        try:
            self._log_file.write(f"# ember launch {datetime.now().isoformat()} {json.dumps(header)}\n".encode())
        except OSError as exc:  # a full disk: the engine may still start; its log stays short
            if not paths.is_no_space(exc):
                raise
            log.warning("cannot write the engine log %s: %s", self.log_path, exc)
        env = dict(os.environ)
        env.update(self.command.env)
        main_thread = threading.current_thread() is threading.main_thread()
        env["EMBER_PDEATHSIG"] = "1" if main_thread else "0"
        env["EMBER_PARENT_PID"] = str(os.getpid())
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command.argv, stdin=subprocess.PIPE, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, close_fds=True,
        )
        if self.command.stdin_line is not None:
            try:
                self.proc.stdin.write(self.command.stdin_line.encode() + b"\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
        log.info("started %s for %s (pid %s), log %s", self.engine, self.model, self.proc.pid, self.log_path)

    def wait_ready(self, timeout: float = 120.0, cancel: threading.Event | None = None,
                   poll: float = 0.02) -> float:
        """Block until /health answers 200; return seconds from spawn to ready."""
        deadline = time.monotonic() + timeout
        url = self.root_url + self.command.health_path
        with httpx.Client(timeout=2.0) as client:
            while True:
                status = self.exit_status()
                if status is not None:
                    raise EngineStartError(f"The {self.engine} engine {status.sentence} while starting.",
                                           status, self.log_tail(), self.log_path)
                if cancel is not None and cancel.is_set():
                    self.stop()
                    raise EngineStartError("Start-up was cancelled.", None, self.log_tail(), self.log_path)
                try:
                    r = client.get(url, headers={"Authorization": f"Bearer {self.api_key}"})
                    if r.status_code == 200:
                        self.ready_at = time.monotonic()
                        return self.ready_at - self.started_at
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    self.stop()
                    raise EngineStartError(
                        f"The {self.engine} engine is running but did not answer within {timeout:.0f} s.",
                        None, tail, self.log_path, timed_out=True)
                time.sleep(poll)

    # -- state ------------------------------------------------------------------------

    def exit_status(self) -> ExitStatus | None:
        return ExitStatus.from_returncode(self.proc.poll()) if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_lines(self, offset: int = 0) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            return []

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self, n: int = TAIL_LINES) -> list[str]:
        return self.log_lines()[-n:]

    def watch(self, on_exit: Callable[[EngineExited], None]) -> threading.Thread | None:
        """Call ``on_exit(EngineExited)`` from a watcher thread as soon as the child ends by itself.

        A stop or kill through this object is not reported. The thread blocks in ``wait()``, so the
        report comes within milliseconds of the exit, not at the next poll."""
        proc = self.proc
        if proc is None:
            return None

        def wait() -> None:
            rc = proc.wait()
            if self._stopping:
                return
            status = ExitStatus.from_returncode(rc)
            log.warning("%s for %s %s", self.engine, self.model, status.sentence)
            try:
                on_exit(EngineExited(self.model, self.engine, status, self.log_tail(), self.log_path))
            except Exception:
                log.exception("exit listener failed for %s", self.model)

        thread = threading.Thread(target=wait, name=f"watch-{self.model}", daemon=True)
        thread.start()
        return thread

    # -- stop -------------------------------------------------------------------------

    def stop(self, grace: float = 5.0) -> Stop:
        self._stopping = True
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                self._close_log()
                return Stop.NOT_RUNNING
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
                result = Stop.OK
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                result = Stop.KILLED
            self._close_log()
            log.info("%s for %s %s", self.engine, self.model, result.value)
            return result

    def kill(self) -> None:
        """Kill at once (tests and 'force quit')."""
        self._stopping = True
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def _close_log(self) -> None:
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
