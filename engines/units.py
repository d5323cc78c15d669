"""How Ember writes sizes, and the defaults every engine shares.

One unit family everywhere a person reads a size: binary units (GiB, MiB), the
ones llama.cpp, nvidia-smi and the models window's hardware line use, so a
model's size, its KV cache and the free memory beside it compare at a glance.
"""
from __future__ import annotations

KIB = 1024
MIB = 1024 ** 2
GIB = 1024 ** 3

#: The context Ember gives a model when nobody chose one (capped by what it was trained on).
DEFAULT_N_CTX = 4096


def size(n: int | float | None, unknown: str = "unknown") -> str:
    """``1.5 GiB``, ``253 MiB``, ``12 KiB``: a size in the largest unit that keeps it above 1."""
    if n is None:
        return unknown
    n = float(n)
    if abs(n) >= GIB:
        return f"{n / GIB:,.1f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:,.0f} MiB"
    if abs(n) >= KIB:
        return f"{n / KIB:,.0f} KiB"
    return f"{n:,.0f} bytes"


def gib(n: int | float | None, unknown: str = "?") -> str:
    """``22.4 GiB``: memory totals, always in GiB so the numbers of one line line up."""
    return unknown if n is None else f"{float(n) / GIB:,.1f} GiB"
