"""The engine child process: ``python -m engines.running.worker`` or ``ember engine-worker``.

Two modes:

``llamacpp``
    runs llama.cpp's HTTP server in this process through ``xllamacpp.Server``;
    its configuration (with the API key, kept off the command line where
    ``ps`` would show it) is the first line of stdin.
``exec -- PROGRAM ARGS...``
    runs another engine's own server (vLLM, SGLang, mlx_lm, transformers) as
    our child, so every engine gets the same never-orphan guarantee.

Either way the worker dies with Ember: it exits when its stdin reaches EOF
(the parent's end of the pipe closes when the parent dies, even by
``kill -9``) and, on Linux, through PR_SET_PDEATHSIG when the parent asked for
it (only safe when the parent spawned us from its main thread, because the
signal follows the spawning *thread*).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time

from engines.running import params as P

log = logging.getLogger("engines.running.worker")


def _die_with_parent(stop: threading.Event) -> None:
    if sys.platform.startswith("linux") and os.environ.get("EMBER_PDEATHSIG") == "1":
        try:
            import ctypes
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
    parent = int(os.environ.get("EMBER_PARENT_PID", "0") or 0)
    if parent and os.getppid() != parent:
        os._exit(3)  # the parent died before we got here

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(1 << 12):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    if os.environ.get("EMBER_WATCH_STDIN", "1") == "1":
        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()


def _on_signals(stop: threading.Event) -> None:
    """Stop on SIGTERM/SIGINT/SIGHUP, saying which in the log: when it was not Ember that sent it
    (a ``kill``, a shutdown), the diagnosis names the signal instead of "exited with status 0"."""
    def stopping(signum, frame) -> None:
        print(f"ember-worker: received {signal.Signals(signum).name}; stopping", file=sys.stderr, flush=True)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, stopping)


def _let_engine_log_drain(quiet: float = 0.25, limit: float = 2.0) -> None:
    """llama.cpp writes its log from its own thread: before we exit, wait until the log stops growing,
    or the line that names the failure (the only place it is named) may never reach the file."""
    try:
        regular = stat.S_ISREG(os.fstat(2).st_mode)
    except OSError:
        regular = False
    if not regular:
        time.sleep(quiet)
        return
    start = last_change = time.monotonic()
    size = os.fstat(2).st_size
    while time.monotonic() - start < limit and time.monotonic() - last_change < quiet:
        time.sleep(0.02)
        now = os.fstat(2).st_size
        if now != size:
            size, last_change = now, time.monotonic()


def run_llamacpp(config: dict, stop: threading.Event) -> int:
    import xllamacpp  # lazy: the native llama.cpp library, needed by this mode only (exec runs other engines)

    p = xllamacpp.CommonParams()
    P.apply(p, config.get("params", {}))
    p.model.path = config["model_path"]
    if config.get("model_alias"):  # /v1/models and every response name the model so, never its file path
        p.model_alias = {config["model_alias"]}
    p.hostnames = [config.get("host", "127.0.0.1")]
    p.port = int(config["port"])
    if config.get("api_key"):
        p.api_keys = [config["api_key"]]
    print(f"ember-worker: starting llama.cpp on {config.get('host', '127.0.0.1')}:{p.port}", file=sys.stderr,
          flush=True)
    try:
        server = xllamacpp.Server(p)
    except RuntimeError as exc:
        _let_engine_log_drain()
        print(f"ember-worker: llama.cpp failed to start: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"ember-worker: ready at {server.listening_address}", file=sys.stderr, flush=True)
    stop.wait()
    # Leave with the server still referenced: its destructor waits for llama.cpp's main loop, which
    # does not end while a reply is being generated (SIGTERM mid-reply then took the whole grace
    # period and a SIGKILL).
    print("ember-worker: stopping", file=sys.stderr, flush=True)
    os._exit(0)


def run_exec(argv: list[str], stop: threading.Event) -> int:
    env = dict(os.environ)
    # Leaving a PyInstaller bundle: give the program the system's libraries, not the bundle's.
    if "LD_LIBRARY_PATH_ORIG" in env:
        env["LD_LIBRARY_PATH"] = env.pop("LD_LIBRARY_PATH_ORIG")
    elif getattr(sys, "frozen", False):
        env.pop("LD_LIBRARY_PATH", None)
    for k in ("EMBER_PDEATHSIG", "EMBER_PARENT_PID", "EMBER_WATCH_STDIN"):
        env.pop(k, None)
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    threading.Thread(target=lambda: (child.wait(), stop.set()), daemon=True).start()
    stop.wait()
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=float(os.environ.get("EMBER_STOP_GRACE", "8")))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        except ProcessLookupError:
            pass
    code = child.returncode
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: engine-worker llamacpp (config on stdin) | exec -- PROGRAM ARGS...", file=sys.stderr)
        return 64
    stop = threading.Event()
    _on_signals(stop)
    mode, rest = argv[0], argv[1:]
    config = json.loads(rest[0] if rest else sys.stdin.readline() or "{}") if mode == "llamacpp" else None
    _die_with_parent(stop)
    if mode == "llamacpp":
        code = run_llamacpp(config, stop)
    elif mode == "exec":
        code = run_exec(rest[1:] if rest[:1] == ["--"] else rest, stop)
    else:
        print(f"engine-worker: unknown mode {mode!r}", file=sys.stderr)
        return 64
    sys.stderr.flush()
    os._exit(code)  # xllamacpp.Server blocks interpreter shutdown; leave at once


if __name__ == "__main__":
    sys.exit(main())
