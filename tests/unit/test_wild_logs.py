"""The classifier on failures as users met them: logs they posted in public issue threads.

``tests/fixtures/wild_logs/<engine>/*.txt`` are verbatim excerpts (the relevant
lines) of logs from llama.cpp (and llama-cpp-python, llama-box, llamafile),
vLLM, SGLang, MLX and Transformers, each headed by its source URL and the kind
of failure it shows; ``healthy/`` holds start-ups that went well. Each is read
the way ``ember diagnose`` reads a pasted log: no launch behind it, the engine
guessed from the lines. The share of right kinds is printed per engine (``-s``)
and carried in the assertion's message.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from engines.diagnosis import diagnose
from engines.diagnosis.types import Kind
from engines.running.backends import ENGINES

pytestmark = pytest.mark.logfixture

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "wild_logs"
HEADER = re.compile(r"^# (source|engine|kind|note): (.*)$")
#: the share of right kinds the corpus must reach, and how many failures and healthy logs it must hold
SHARE, MIN_FAILURES, MIN_HEALTHY = 0.90, 40, 8


@dataclass(frozen=True)
class WildLog:
    path: Path
    source: str
    engine: str
    kind: str          # a Kind's value, or "healthy"
    text: str          # the log lines, header removed

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def load() -> list[WildLog]:
    logs = []
    for path in sorted(CORPUS.glob("*/*.txt")):
        header, body = {}, []
        for line in path.read_text(encoding="utf-8").splitlines():
            m = HEADER.match(line)
            if m and not body:
                header[m.group(1)] = m.group(2).strip()
            else:
                body.append(line)
        logs.append(WildLog(path, header.get("source", ""), header.get("engine", ""), header.get("kind", ""),
                            "\n".join(body)))
    return logs


LOGS = load()
FAILURES = [w for w in LOGS if w.kind != "healthy"]
HEALTHY = [w for w in LOGS if w.kind == "healthy"]


def test_every_log_says_where_it_comes_from_and_what_it_shows():
    for w in LOGS:
        assert re.match(r"https://github\.com/[\w.-]+/[\w.-]+/(issues|pull)/\d+$", w.source), w.name
        assert w.engine in ENGINES, w.name
        assert w.kind == "healthy" or w.kind in {k.value for k in Kind}, w.name
        assert w.text.strip(), w.name
    assert len(FAILURES) >= MIN_FAILURES and len(HEALTHY) >= MIN_HEALTHY
    assert {w.engine for w in FAILURES} == set(ENGINES), "every engine has failures in the corpus"


def _report(results: dict[str, list[tuple[WildLog, str]]], title: str) -> tuple[float, str]:
    lines, right, total = [title], 0, 0
    for engine in ENGINES:
        rows = results.get(engine, [])
        ok = sum(1 for w, got in rows if got == w.kind)
        right, total = right + ok, total + len(rows)
        lines.append(f"  {engine:13s} {ok:3d}/{len(rows):<3d} right kinds ({ok / len(rows):.0%})" if rows else
                     f"  {engine:13s}   -")
        lines += [f"      wrong: {w.name}: shows {w.kind}, read as {got}" for w, got in rows if got != w.kind]
    share = right / total
    lines.append(f"  {'all':13s} {right:3d}/{total:<3d} right kinds ({share:.0%})")
    return share, "\n".join(lines)


def _read(w: WildLog, engine: str | None) -> str:
    d = diagnose.diagnose_text(w.text, engine)
    return str(d.kind) if d is not None else "healthy"


@pytest.mark.parametrize("hint", [False, True], ids=["pasted, engine guessed", "engine given (--engine)"])
def test_share_of_right_kinds_per_engine(hint):
    results: dict[str, list[tuple[WildLog, str]]] = {}
    for w in FAILURES:
        results.setdefault(w.engine, []).append((w, _read(w, w.engine if hint else None)))
    share, report = _report(results, f"Real failure logs, {'engine given' if hint else 'engine guessed'}:")
    print("\n" + report)
    assert share >= SHARE, report


@pytest.mark.parametrize("hint", [False, True], ids=["pasted, engine guessed", "engine given (--engine)"])
def test_no_healthy_log_is_called_a_failure(hint):
    alarms = Counter()
    for w in HEALTHY:
        got = _read(w, w.engine if hint else None)
        if got != "healthy":
            alarms[f"{w.name} read as {got}"] += 1
    print(f"\nHealthy start-up logs: {len(HEALTHY)}, false alarms: {sum(alarms.values())}")
    assert not alarms, list(alarms)


def test_every_diagnosis_of_the_corpus_is_whole():
    """What a user reads for each real failure: a title, an explanation, and something to do."""
    for w in FAILURES:
        d = diagnose.diagnose_text(w.text)
        if d is None:
            continue
        assert d.title and d.explanation and d.fixes, w.name
        assert d.facts.get("phase") in ("start", "run", "unknown"), w.name
        as_json = d.to_dict()
        assert {"kind", "title", "explanation", "facts", "fixes"} <= set(as_json), w.name
