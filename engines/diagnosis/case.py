"""The case being diagnosed: a launch plan read through its engine's interface.

Engine-neutral diagnosis speaks of "the context", "slots" and "GPU layers";
:class:`Case` turns those into the engine's own numbers and words (through
:attr:`Engine.roles` and :meth:`Engine.context`) and asks the engine for the
parameter fixes (:meth:`Engine.fixes_for`). Without a plan (a remote server, an
error before launch) there is no engine: numbers are unknown and only actions
are offered.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

from engines.diagnosis.types import Fix, Kind, count
from engines.running import backends
from engines.running.backends.base import ContextShape, Engine, PlanView, offloads_to_gpu, trained_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    plan: PlanView | None
    engine: Engine | None
    shape: ContextShape

    @classmethod
    def of(cls, plan: PlanView | None) -> "Case":
        name = getattr(plan, "engine", None) if plan is not None else None
        engine = None
        if name:
            try:
                engine = backends.get(name)
            except backends.UnknownEngine as exc:  # a missing backend must not hide the diagnosis
                log.info("diagnosing without the engine: %s", exc)
        shape = engine.context(plan) if engine is not None else ContextShape(None)
        return cls(plan, engine, shape)

    @classmethod
    def for_engine(cls, name: str | None) -> "Case":
        """A log read without a launch (``ember diagnose``): the engine's words and fixes, the log's numbers."""
        try:
            engine = backends.get(name) if name else None
        except backends.UnknownEngine as exc:
            log.info("diagnosing without the engine: %s", exc)
            engine = None
        return cls(None, engine, engine.context(None) if engine is not None else ContextShape(None))

    @property
    def label(self) -> str:
        """The engine's name for people ("llama.cpp"), or "the engine"."""
        return self.engine.label if self.engine is not None else "the engine"

    @property
    def trained(self) -> int | None:
        """The context the model was trained on."""
        return trained_context(self.plan)

    @property
    def context_key(self) -> str:
        """What the engine calls its context size (for the words)."""
        return (self.engine.roles.context if self.engine else None) or "context"

    @property
    def gpu_in_play(self) -> bool:
        """The plan puts layers on a GPU."""
        return self.engine is not None and offloads_to_gpu(self.plan, self.engine.roles.gpu_layers)

    def words(self, per_slot: int | None = None) -> str:
        """'(n_ctx 2,048 / n_parallel 1)' or '(context length 4,096)': the context as the engine holds it.

        When the engine really uses another total than the one set (llama.cpp rounds tiny
        slots up), both are said."""
        s = self.shape
        if not s.total:
            return ""
        if not s.split or self.engine is None:
            return f"(context length {count(s.total)})"
        ctx, par = self.engine.roles.context, self.engine.roles.parallel
        if s.shared:
            return f"({ctx} {count(s.total)}, shared by all slots)"
        per_slot = per_slot or s.per_slot
        if per_slot and per_slot * s.slots != s.total:
            return (f"({ctx} {count(per_slot * s.slots)} / {par} {s.slots}; {self.engine.label} changed the "
                    f"{ctx} {count(s.total)} you set)")
        return f"({ctx} {count(s.total)} / {par} {s.slots})"

    def fixes(self, kind: Kind, facts: Mapping[str, object]) -> list[Fix]:
        """The engine's parameter fixes for this kind ([] without an engine; from the facts alone without a plan)."""
        if self.engine is None:
            return []
        try:
            return list(self.engine.fixes_for(kind, dict(facts), self.plan))
        except Exception:  # a diagnosis must never hide the original error
            log.exception("fixes from engine %s failed", self.engine.name)
            return []

    def changed_context(self, fixes: list[Fix]) -> int | None:
        """The context size the first of ``fixes`` that changes it sets."""
        key = self.engine.roles.context if self.engine else None
        return next((f.changes[key] for f in fixes if key and key in f.changes), None)
