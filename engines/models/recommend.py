"""The chat models to recommend for a machine: the best one to three that fit and write at a usable speed.

A newcomer whose only model is the starter (a base model that continues text)
needs one good next step. From the catalog rows of ``ember models --json``
(fit already computed for this machine), :func:`annotate` marks the best
one to three chat models with ``recommended`` and ``recommended_rank``:

1. Only GGUF variants: llama.cpp ships with Ember, so "Download and chat"
   works without installing an engine. One variant per model (Q4_K_M, the
   catalog's default, else the smallest that qualifies) and one model per
   family, so the three choices differ.
2. Never a model that does not fit: the fit must be ``gpu``, ``partial`` or
   ``cpu``, and the part held in RAM must leave :data:`RAM_HEADROOM` of it to
   the rest of the computer.
3. Only models expected to write at least :data:`MIN_TOKENS_PER_SECOND`
   (:mod:`engines.machine.speed`, an estimate from size and memory bandwidth):
   on a CPU-only machine this is what keeps a big model off the list.
4. Ranked by the catalog's ``quality_tier`` (general-chat quality, 1-5),
   then by expected speed. A bigger machine lets a higher tier through, so it
   gets a bigger model.

Every row gets ``recommended`` and ``recommended_rank`` (None when not
recommended) and, where it runs here, ``expected_tokens_per_second`` (an
estimate, stated as one in ``speed_basis``); a recommended row also gets
``recommended_because``, one sentence for people.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from engines.machine import speed
from engines.machine.hardware import HardwareProfile
from engines.models import catalog

log = logging.getLogger(__name__)

MAX_RECOMMENDED = 3
#: About reading speed: slower than this, a reply feels stuck.
MIN_TOKENS_PER_SECOND = 6.0
#: Share of RAM a recommended model's CPU part may take (the browser and desktop need the rest).
RAM_HEADROOM = 0.75
PREFERRED_QUANTIZATION = "Q4_K_M"
RUNS = ("gpu", "partial", "cpu")
TIER_WORDS = {1: "tiny", 2: "small", 3: "good everyday", 4: "strong", 5: "top-tier"}


@dataclass(frozen=True)
class Candidate:
    """A catalog GGUF variant that qualifies, with what ranks it."""

    row: dict
    model_id: str
    family: str
    tier: int
    speed: speed.SpeedEstimate

    @property
    def rank_key(self) -> tuple:
        quantization = 0 if self.row["quantization"] == PREFERRED_QUANTIZATION else 1
        return (-self.tier, quantization, -self.speed.tokens_per_second)

    def because(self) -> str:
        return (f"A {TIER_WORDS.get(self.tier, '')} chat model that {_fit_words(self.row['fit'])}; "
                f"{self.speed.summary()}.")


def _fit_words(fit: str) -> str:
    return {"gpu": "fits on your GPU", "partial": "runs partly on your GPU",
            "cpu": "runs on your CPU"}.get(fit, "runs here")


def _active_share(model: dict) -> float:
    total, active = model.get("parameters"), model.get("active_parameters")
    return active / total if total and active else 1.0


def ram_needed(row: dict, hw: HardwareProfile) -> int:
    """Bytes of RAM the model takes on this machine: what the GPUs do not hold (all of it with unified memory)."""
    total = int(row.get("total_bytes") or (row.get("weights_bytes") or 0) + (row.get("kv_cache_bytes") or 0))
    if hw.apple_silicon or hw.is_mac_arm:
        return total
    return 0 if row["fit"] == "gpu" else max(0, total - int(row.get("vram_bytes") or 0))


def _speed_of(row: dict, hw: HardwareProfile) -> speed.SpeedEstimate | None:
    entry = catalog.entries().get(row["name"]) if not row.get("local") else None
    return speed.estimate_row(row, hw, _active_share(entry.model) if entry else 1.0)


def _candidate(row: dict, hw: HardwareProfile, estimate: speed.SpeedEstimate | None) -> Candidate | None:
    """The row as a recommendation candidate, or None with the reason logged."""
    entry = catalog.entries().get(row["name"])
    if entry is None or row.get("local") or row["format"] != "gguf" or row["fit"] not in RUNS:
        return None
    tier = entry.model.get("quality_tier")
    if not tier or "chat" not in (entry.model.get("tags") or []):
        return None
    if estimate is None or estimate.tokens_per_second < MIN_TOKENS_PER_SECOND:
        log.debug("not recommending %s: too slow here (%s)", row["name"], estimate and estimate.summary())
        return None
    if ram_needed(row, hw) > hw.ram_total_bytes * RAM_HEADROOM:
        log.debug("not recommending %s: it would take most of the RAM", row["name"])
        return None
    return Candidate(row, entry.model["id"], entry.model.get("family") or entry.model["id"], int(tier), estimate)


def pick(candidates: list[Candidate], limit: int = MAX_RECOMMENDED) -> list[Candidate]:
    """The best candidates, one variant per model and one model per family."""
    chosen: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: c.rank_key):
        if any(c.model_id == x.model_id or c.family == x.family for x in chosen):
            continue
        chosen.append(c)
        if len(chosen) == limit:
            break
    return chosen


def annotate(rows: list[dict], hw: HardwareProfile, limit: int = MAX_RECOMMENDED) -> list[dict]:
    """Add the recommendation fields to every row (in place) and return the rows, order unchanged."""
    candidates = []
    for row in rows:
        estimate = _speed_of(row, hw)
        row["recommended"], row["recommended_rank"] = False, None
        row["expected_tokens_per_second"] = round(estimate.tokens_per_second, 1) if estimate else None
        row["speed_basis"] = f"estimate: {estimate.basis}" if estimate else None
        c = _candidate(row, hw, estimate)
        if c is not None:
            candidates.append(c)
    for rank, c in enumerate(pick(candidates, limit), start=1):
        c.row.update(recommended=True, recommended_rank=rank, recommended_because=c.because())
    return rows


def recommended(rows: list[dict]) -> list[dict]:
    """The annotated rows that are recommended, best first (the models window's section)."""
    return sorted((r for r in rows if r.get("recommended")), key=lambda r: r["recommended_rank"])
