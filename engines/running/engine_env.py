"""Which Python interpreter runs each engine, and what that interpreter has installed.

vLLM and SGLang pin their own torch and CUDA, so users install them in an
environment of their own. Each engine may be given its own interpreter (setting
``engine_python.<engine>``); Ember then asks *that* interpreter for the engine's
version (a short child process, cached per interpreter) and launches the
engine's server with it. Without a setting, Ember's own interpreter is used.
"""
from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from engines import settings

log = logging.getLogger(__name__)

#: engine -> (distribution whose version is reported, modules that must import)
PACKAGES = {
    "llamacpp": ("xllamacpp", ("xllamacpp",)),
    "transformers": ("transformers", ("transformers", "torch", "starlette", "uvicorn")),  # Ember's server: hf_server
    "vllm": ("vllm", ("vllm",)),
    "sglang": ("sglang", ("sglang",)),
    "mlx": ("mlx-lm", ("mlx_lm",)),
}

_PROBE = (
    "import importlib.metadata as m, importlib.util as u, sys\n"
    "mods = sys.argv[2:]\n"
    "missing = [x for x in mods if u.find_spec(x) is None]\n"
    "print('missing:' + ','.join(missing) if missing else 'version:' + m.version(sys.argv[1]))\n"
)


@dataclass(frozen=True)
class Probe:
    """What an interpreter said about one engine."""

    interpreter: str
    installed: bool
    version: str | None = None
    problem: str | None = None   # why not installed, in words


def configured_python(engine: str) -> str | None:
    """The interpreter the user set for ``engine``, or None (Ember's own)."""
    env = os.environ.get(f"EMBER_{engine.upper()}_PYTHON")  # for scripts and tests
    return env or settings.engine_python(engine)


def own_python() -> str | None:
    """Ember's interpreter, or None in a frozen build (there is no Python to hand out)."""
    return None if getattr(sys, "frozen", False) else sys.executable


def python_for(engine: str) -> str | None:
    return configured_python(engine) or own_python()


def set_python(engine: str, interpreter: str | None) -> None:
    """Remember an interpreter for an engine (None: back to Ember's own)."""
    settings.set(settings.ENGINE_PYTHON + engine, str(interpreter) if interpreter else None)
    probe.cache_clear()


@functools.lru_cache(maxsize=64)
def probe(engine: str, interpreter: str) -> Probe:
    """Ask ``interpreter`` whether it has ``engine`` (cached; call ``probe.cache_clear()`` after installs)."""
    dist, modules = PACKAGES[engine]
    if not Path(interpreter).exists():
        return Probe(interpreter, False, None, f"{interpreter} does not exist")
    try:
        out = subprocess.run([interpreter, "-c", _PROBE, dist, *modules], capture_output=True, text=True,
                             timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(interpreter, False, None, f"{interpreter} could not be run: {exc}")
    line = (out.stdout.strip().splitlines() or [""])[-1]
    if line.startswith("version:"):
        return Probe(interpreter, True, line[len("version:"):])
    if line.startswith("missing:"):
        return Probe(interpreter, False, None, f"{interpreter} has no {line[len('missing:'):]}")
    err = (out.stderr.strip().splitlines() or ["no answer"])[-1]
    return Probe(interpreter, False, None, f"{interpreter} failed: {err}")


def check(engine: str) -> Probe | None:
    """The configured interpreter's answer for ``engine``; None when none is configured."""
    interpreter = configured_python(engine)
    return probe(engine, interpreter) if interpreter else None


def child_env(interpreter: str) -> dict[str, str]:
    """Environment additions so ``interpreter -m engines.<module>`` finds Ember's own modules."""
    if interpreter == sys.executable:
        return {}
    root = str(Path(__file__).resolve().parent.parent.parent)
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": root + (os.pathsep + current if current else "")}
