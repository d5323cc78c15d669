"""Reading the evidence of a failure: which known lines a log holds, and the log itself.

An engine's log is read with its own dialect (``Engine.log_patterns``) first,
then the engine-neutral tables (:mod:`engines.diagnosis.patterns`). Without an
engine (a remote server, or no plan) every engine's dialect is tried, llama.cpp's
first: a server Ember did not start may be any of them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable

from engines.diagnosis import patterns
from engines.diagnosis.types import Kind, LogPattern
from engines.running import backends

log = logging.getLogger(__name__)

TAIL_LINES = 20


@dataclass
class Match:
    kind: Kind
    facts: dict[str, object]
    line: str
    rank: int  # the pattern's place in the tables read (lower = more specific)


def patterns_for(engine: str | None) -> list[LogPattern]:
    """The tables an engine's log is read with, in order."""
    if engine:
        try:
            own = list(backends.get(engine).log_patterns)
        except backends.UnknownEngine as exc:  # a missing backend must not hide the diagnosis
            log.info("no log patterns for %s: %s", engine, exc)
            own = []
    else:
        own = [p for e in backends.all_engines() for p in e.log_patterns]
    return own + list(patterns.GENERIC) + list(patterns.HTTP)


def _classify(lines: Iterable[str], table: list[LogPattern]) -> list[Match]:
    found = []
    for line in lines:
        for rank, pattern in enumerate(table):
            facts = pattern.match(line)
            if facts is not None:
                found.append(Match(pattern.kind, facts, line.strip(), rank))
                break
    return found


def classify_lines(lines: list[str], engine: str | None = None) -> list[Match]:
    """Every line that matches a pattern, with the rank of the pattern (lower = more specific)."""
    return _classify(lines, patterns_for(engine))


def best_match(lines: list[str], engine: str | None = None, kinds: set[str] | None = None) -> Match | None:
    matches = [m for m in classify_lines(lines, engine) if kinds is None or m.kind in kinds]
    return min(matches, key=lambda m: m.rank) if matches else None


def first_match(table: Iterable[LogPattern], lines: list[str]) -> Match | None:
    """The first pattern of one table (in table order) that matches any of ``lines``."""
    matches = _classify(lines, list(table))
    return min(matches, key=lambda m: m.rank) if matches else None


def read_log(path) -> list[str]:
    """A launch's log, from its last ``# ember launch`` header on."""
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except (OSError, TypeError):
        return []
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("# ember launch"):
            return lines[i:]
    return lines


def proc_lines(proc, offset: int = 0, settle: float = 0.3) -> list[str]:
    """The engine's lines since ``offset``; waits briefly for the child to flush the error line."""
    if proc is None:
        return []
    lines = proc.log_lines(offset)
    if settle and not best_match(lines, getattr(proc, "engine", None)):
        time.sleep(settle)
        lines = proc.log_lines(offset)
    return lines


def tail(lines: list[str], n: int = TAIL_LINES) -> list[str]:
    return [l for l in lines if not l.startswith("# ember launch")][-n:]


def wait_exit(proc, seconds: float = 0.5):
    """A killed engine is reaped within milliseconds of the dropped connection; a live one costs at most this."""
    deadline = time.monotonic() + seconds
    while True:
        status = proc.exit_status()
        if status is not None or time.monotonic() > deadline:
            return status
        time.sleep(0.05)
