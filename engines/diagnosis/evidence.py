"""Reading the evidence of a failure: which known lines a log holds, whose log it is, when it failed.

An engine's log is read with its own dialect (``Engine.log_patterns``) first,
then the engine-neutral tables (:mod:`engines.diagnosis.patterns`). Without an
engine (a remote server, or no plan) every engine's dialect is tried, llama.cpp's
first: a server Ember did not start may be any of them. A log pasted from
elsewhere names no engine: :func:`guess_engine` reads it from the lines only one
engine writes, and :func:`phase_of` whether the failure came while loading or
while answering.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Iterable

from engines.diagnosis import patterns
from engines.diagnosis.types import Kind, LogPattern
from engines.running import backends

log = logging.getLogger(__name__)

TAIL_LINES = 20


#: Kinds only a request can cause: a log that shows one was serving when it failed.
REQUEST_KINDS = frozenset({Kind.CONTEXT_EXCEEDED, Kind.IMAGE_FAILED, Kind.NOT_SUPPORTED, Kind.AUTH_FAILED,
                           Kind.REPLY_CUT_SHORT})


@dataclass
class Match:
    kind: Kind
    facts: dict[str, object]
    line: str
    rank: int  # the pattern's place in the tables read (lower = more specific)
    index: int = -1  # the line's place in the log
    pattern: LogPattern | None = None


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


#: A line logged at INFO or DEBUG level reports, it never is the failure ("If you are running out of memory,
#: consider..."): vLLM's "INFO 08-19 ...", uvicorn's "INFO:", Python logging's " - INFO - ", a worker's prefix first.
QUIET = re.compile(r"^\s*(?:\(\w+ pid=\d+\)\s*)?(?:\[[^\]]*\]\s*)?(?:INFO|DEBUG)\b|\s-\s(?:INFO|DEBUG)\s-\s")


def _classify(lines: Iterable[str], table: list[LogPattern], supporting: bool = False) -> list[Match]:
    """The lines a table names (``supporting``: the lines that only lend numbers to a failure named elsewhere)."""
    found = []
    for index, line in enumerate(lines):
        if not supporting and QUIET.search(line):
            continue
        for rank, pattern in enumerate(table):
            if bool(pattern.facts.get("supporting")) != supporting:
                continue
            facts = pattern.match(line)
            if facts is not None:
                facts.pop("supporting", None)
                found.append(Match(pattern.kind, facts, line.strip(), rank, index, pattern))
                break
    return found


def supporting_facts(lines: list[str], best: Match, engine: str | None = None) -> dict[str, object]:
    """Numbers for ``best`` from lines that alone are no failure (llama.cpp's "new prompt, n_ctx_slot = ...,
    n_prompt_tokens = ..." before its context error), the nearest line before it first."""
    found = [m for m in _classify(lines, patterns_for(engine), supporting=True)
             if m.kind == best.kind and (best.index < 0 or m.index <= best.index)]
    facts: dict[str, object] = {}
    for m in sorted(found, key=lambda m: -m.index):
        for k, v in m.facts.items():
            facts.setdefault(k, v)
    return facts


def owner(best: Match) -> str | None:
    """The one engine whose own table holds the pattern that named ``best`` (None: shared, or engine-neutral)."""
    owners = [e.name for e in backends.all_engines() if any(p is best.pattern for p in e.log_patterns)]
    return owners[0] if len(owners) == 1 else None


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


def guess_engine(lines: list[str]) -> str | None:
    """The engine that wrote a log, from the lines only it writes; None when no engine, or two, stand out."""
    scores = {}
    for engine in backends.all_engines():
        if engine.log_signature is not None:
            scores[engine.name] = sum(1 for line in lines if engine.log_signature.search(line))
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    if not ranked or ranked[0][1] == 0 or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        return None
    return ranked[0][0]


def _engines(engine: str | None) -> list:
    if engine:
        try:
            return [backends.get(engine)]
        except backends.UnknownEngine:
            return []
    return backends.all_engines()


def phase_of(lines: list[str], best: Match, engine: str | None = None) -> str | None:
    """When the failure ``best`` names happened: "run" (answering), "start" (loading), None (the log cannot tell).

    A request-level failure (a prompt too long, an image) is "run" whatever else the log shows. Otherwise the
    last loading or serving line before the failure says which (an older llama-server listens before it loads);
    with neither before it, a loading line anywhere means "start", a serving line after it (the frames of a
    traceback from the serving loop) "run".
    """
    if best.kind in REQUEST_KINDS:
        return "run"
    engines = _engines(engine)
    serving = [patterns.SERVING] + [e.serving_lines for e in engines if e.serving_lines is not None]
    loading = [patterns.LOADING] + [e.loading_lines for e in engines if e.loading_lines is not None]
    cut = best.index if best.index >= 0 else len(lines)
    for line in reversed(lines[:cut]):
        if any(rx.search(line) for rx in loading):
            return "start"
        if any(rx.search(line) for rx in serving):
            return "run"
    if any(rx.search(line) for line in lines for rx in loading):
        return "start"
    if any(rx.search(line) for line in lines[cut:] for rx in serving):
        return "run"
    return None


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
