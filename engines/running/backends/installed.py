"""The engines Ember knows, and whether each is installed here.

This module only answers "is it here, which version, how to install it"
without importing the engine (torch and friends take seconds to import); how
to launch an engine lives in its own backend module (:mod:`engines.running.backends`).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass

from engines.running import engine_env

ENGINES = ("llamacpp", "transformers", "vllm", "sglang", "mlx")

LABELS = {"llamacpp": "llama.cpp", "transformers": "Transformers", "vllm": "vLLM",
          "sglang": "SGLang", "mlx": "MLX"}

#: (import name, distribution for the version, install command)
_PACKAGES = {
    "llamacpp": ("xllamacpp", "xllamacpp", "pip install xllamacpp"),
    "transformers": ("transformers", "transformers", "pip install 'ember[transformers]'"),
    "vllm": ("vllm", "vllm", "pip install vllm   (in its own environment; see Settings > Engines)"),
    "sglang": ("sglang", "sglang", "pip install 'sglang[all]'   (in its own environment; see Settings > Engines)"),
    "mlx": ("mlx_lm", "mlx-lm", "pip install 'ember[mlx]'"),
}

#: What an engine needs in a Python environment of its own (``engine_python.<engine>``), where
#: Ember's extras do not apply: pyproject's ``transformers`` extra, Ember's server's stack included.
SEPARATE_ENVIRONMENT = {
    "transformers": "torch 'transformers>=4.50' safetensors accelerate 'starlette>=0.40' 'uvicorn>=0.30'",
}


def _install_command(engine: str, interpreter: str | None) -> str:
    """How to install ``engine``; for an environment of its own, with that environment's pip."""
    if engine not in SEPARATE_ENVIRONMENT:
        return _PACKAGES[engine][2]
    return f"{interpreter + ' -m pip' if interpreter else 'pip'} install {SEPARATE_ENVIRONMENT[engine]}"


@dataclass(frozen=True)
class Availability:
    engine: str
    installed: bool
    version: str | None
    install_command: str
    interpreter: str | None = None   # the Python that runs it (None: frozen build, no Python)
    problem: str | None = None       # why the interpreter that would run it cannot


def availability(engine: str) -> Availability:
    """Installed or not, judged by the interpreter that would run the engine.

    An interpreter set for the engine (``engine_python.<engine>``) is asked in a child
    process (cached); otherwise Ember's own environment is looked at without importing.
    """
    module, dist, cmd = _PACKAGES[engine]
    if engine != "llamacpp":  # llama.cpp runs inside Ember's own worker
        configured = engine_env.check(engine)
        if configured is not None:
            return Availability(engine, configured.installed, configured.version,
                                _install_command(engine, configured.interpreter), configured.interpreter,
                                configured.problem)
        if engine_env.own_python() is None:  # a frozen build: its engines need a Python environment
            return Availability(engine, False, None, _install_command(engine, None), None,
                                "this packaged Ember has no Python of its own; choose the python of an "
                                "environment where it is installed (ember engine-python)")
    missing = [m for m in engine_env.PACKAGES[engine][1] if importlib.util.find_spec(m) is None]
    installed = not missing
    problem = None
    if missing and module not in missing:  # the engine is here, something it needs is not
        problem = f"{engine_env.own_python()} has no {','.join(missing)}"
    version = None
    if installed:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return Availability(engine, installed, version, cmd, engine_env.own_python(), problem)


def install_command(engine: str) -> str:
    """How to install ``engine`` (without asking any interpreter whether it is there)."""
    return _PACKAGES[engine][2]


def installed_engines() -> dict[str, bool]:
    return {e: availability(e).installed for e in ENGINES}
