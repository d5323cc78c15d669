"""The engines Ember can run: each one an :class:`~engines.running.backends.base.Engine`, found by name.

Each engine is reached the same way (an OpenAI-compatible server on loopback);
how to launch it and how to read its failures live in its own module, behind
the one interface. Callers ask the registry (:func:`get`), never a module by
name. Whether an engine is installed here is :mod:`.installed`'s question.
"""
from __future__ import annotations

from engines.running.backends import llamacpp, mlx, sglang, transformers, vllm
from engines.running.backends.base import Engine
from engines.running.backends.installed import ENGINES, LABELS, Availability, availability, installed_engines

__all__ = ["ENGINES", "LABELS", "Availability", "Engine", "UnknownEngine", "availability", "all_engines", "get",
           "installed_engines", "register", "unregister"]


class UnknownEngine(KeyError):
    """No engine of that name is registered."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown engine {name!r}; choose one of {', '.join(_REGISTRY)}")

    def __str__(self) -> str:
        return self.args[0]


_REGISTRY: dict[str, Engine] = {e.name: e for e in (llamacpp.ENGINE, transformers.ENGINE, vllm.ENGINE,
                                                     sglang.ENGINE, mlx.ENGINE)}


def get(name: str) -> Engine:
    """The engine called ``name``; UnknownEngine when there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEngine(name) from None


def all_engines() -> list[Engine]:
    """Every registered engine, Ember's own five first, in the order of ENGINES."""
    return list(_REGISTRY.values())


def register(engine: Engine) -> None:
    """Add an engine (a test's fake one, or a plug-in) under its name."""
    if not isinstance(engine, Engine):
        raise TypeError(f"{engine!r} does not implement the Engine interface")
    _REGISTRY[engine.name] = engine


def unregister(name: str) -> None:
    """Remove an engine added with :func:`register` (Ember's own five stay)."""
    if name in ENGINES:
        raise ValueError(f"{name} is one of Ember's own engines")
    _REGISTRY.pop(name, None)
