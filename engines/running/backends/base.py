"""The one interface every engine implements, and the plan view engines read.

Launching (:mod:`engines.running.launch`) and diagnosing (:mod:`engines.diagnosis`)
call engines only through :class:`Engine`; what an engine calls its parameters
stays inside its backend. Where engine-neutral code must speak of the context
size, the parallel slots or the GPU layers, it asks :attr:`Engine.roles` which
of the engine's keys plays that part.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import ClassVar, Mapping, NamedTuple, Protocol

from engines.diagnosis.types import Fix, Kind, LogPattern
from engines.machine.fit import FitEstimate, LoadedReport
from engines.machine.hardware import HardwareProfile
from engines.models.store import ModelSpec
from engines.running.backends import terms
from engines.running.params import ParamSpec
from engines.running.supervisor import Command


#: The engine-neutral parts a parameter may play, as :class:`Roles` names them, and how people read each.
ROLE_WORDS = {"context": "context", "parallel": "parallel slots", "gpu_layers": "GPU layers"}


@dataclass(frozen=True)
class Roles:
    """Which of an engine's parameter keys plays each engine-neutral part (None: the engine has none)."""

    context: str | None = None      # the context length in tokens
    parallel: str | None = None     # requests answered at the same time
    gpu_layers: str | None = None   # layers offloaded to the GPU

    def key(self, role: str) -> str | None:
        """The engine's key for ``role`` ("context", "parallel", "gpu_layers"); None when it has none."""
        return getattr(self, role) if role in ROLE_WORDS else None

    def role_of(self, key: str) -> str | None:
        """The role the engine's ``key`` plays, if any."""
        return next((r for r in ROLE_WORDS if getattr(self, r) == key), None)

    def to_keys(self, changes: Mapping[str, object]) -> dict[str, object]:
        """``changes`` with role names ({"context": 4096}) said in the engine's keys ({"n_ctx": 4096}); keys
        already the engine's stay; a role the engine has no key for is dropped."""
        out: dict[str, object] = {}
        for k, v in changes.items():
            if k in ROLE_WORDS:
                if getattr(self, k):
                    out[getattr(self, k)] = v
            else:
                out[k] = v
        return out

    def to_roles(self, values: Mapping[str, object]) -> dict[str, object]:
        """The values among ``values`` that play a role, by role name (what another engine can take over)."""
        return {r: values[getattr(self, r)] for r in ROLE_WORDS if getattr(self, r) and getattr(self, r) in values}

    def describe(self, changes: Mapping[str, object]) -> str:
        """``context 8,192 tokens, 2 parallel slots, cache_type_k q8_0``: a change said by role where one plays one."""
        parts = []
        for k, v in changes.items():
            role = k if k in ROLE_WORDS else self.role_of(k)
            if role == "context":
                parts.append(f"context {_count(v)} tokens")
            elif role == "parallel":
                parts.append(f"{_count(v)} parallel slot{'s' if v != 1 else ''}")
            elif role == "gpu_layers":
                parts.append(f"{_count(v)} GPU layers" if int(v) >= 0 else "GPU layers chosen by Ember")
            else:
                parts.append(f"{k} {v}")
        return ", ".join(parts)


class PlanView(Protocol):
    """The parts of a :class:`engines.running.launch.LaunchPlan` an engine reads to size its fixes."""

    engine: str
    model: ModelSpec
    params: dict[str, object]
    hardware: HardwareProfile
    fit: FitEstimate | None


class Prepared(NamedTuple):
    """What :meth:`Engine.prepare` gives: the engine's values, its memory estimate, warnings for people."""

    values: dict[str, object]
    estimate: FitEstimate | None
    warnings: list[str]


@dataclass(frozen=True)
class ContextShape:
    """How an engine holds a plan's context, in tokens, for the diagnosis' words and numbers."""

    total: int | None               # the whole context (the model's trained one when the plan leaves it unset)
    slots: int = 1                  # requests served at once
    per_slot: int | None = None     # what one request may use, as the engine really sets it
    split: bool = False             # the total is divided among the slots (llama.cpp), not one per request
    shared: bool = False            # split engines: every slot may use the whole total (llama.cpp's kv_unified)


def _count(v) -> str:
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return str(v)


def plan_param(plan: PlanView | None, key: str | None, default=None):
    """A plan's value for ``key``; ``default`` when there is no plan, no such key, or the value is None."""
    if plan is None or key is None:
        return default
    v = (getattr(plan, "params", None) or {}).get(key)
    return default if v is None else v


def trained_context(plan: PlanView | None) -> int | None:
    """The context the plan's model was trained on, when known."""
    return getattr(getattr(plan, "model", None), "context_length", None) if plan is not None else None


def free_memory(hw: HardwareProfile | None) -> int | None:
    """RAM available plus the free memory of the GPUs llama.cpp can use: what a launch may still fill."""
    if hw is None:
        return None
    ram = hw.ram_available_bytes or hw.ram_total_bytes or 0
    vram = sum((g.memory_free_bytes or 0) for g in hw.llamacpp_gpus())
    return (ram + vram) or None


def offloads_to_gpu(plan: PlanView | None, gpu_layers_key: str | None) -> bool:
    """The plan puts layers on a GPU llama.cpp can use (an engine without a GPU-layers key: never)."""
    if plan is None or not plan.hardware.llamacpp_gpus():
        return False
    return int(plan_param(plan, gpu_layers_key, 0) or 0) != 0


class Engine(abc.ABC):
    """One engine Ember can run: its parameters, how to start it, and how to read its failures."""

    name: ClassVar[str]                         # Ember's key for it ("llamacpp", "vllm"...)
    label: ClassVar[str]                        # the name people read ("llama.cpp", "vLLM"...)
    roles: ClassVar[Roles]
    log_patterns: ClassVar[tuple[LogPattern, ...]]   # its own log lines, most specific first
    #: Lines only this engine writes: which engine wrote a log pasted from elsewhere (``ember diagnose``).
    log_signature: ClassVar[re.Pattern | None] = None
    #: Lines it writes while loading a model, and once it serves requests: when a failure happened.
    loading_lines: ClassVar[re.Pattern | None] = None
    serving_lines: ClassVar[re.Pattern | None] = None
    #: How to install the build that can use an NVIDIA GPU (None: the engine has no other build).
    gpu_install: ClassVar[str | None] = None

    @abc.abstractmethod
    def schema(self) -> dict[str, ParamSpec]:
        """Every parameter the engine accepts, by Ember's key."""

    @abc.abstractmethod
    def validate(self, pairs: Mapping[str, object] | list[str] | tuple[str, ...]) -> dict[str, object]:
        """``key=value`` pairs checked and typed; ParamError on the first bad one."""

    @abc.abstractmethod
    def prepare(self, spec: ModelSpec, hw: HardwareProfile, values: dict[str, object]) -> Prepared:
        """Ember's defaults over the user's values (and the GPU layers where the engine needs them)."""

    @abc.abstractmethod
    def command(self, spec: ModelSpec, values: dict[str, object], host: str, port: int, api_key: str) -> Command:
        """How the worker starts the engine for these values."""

    def loaded(self, lines: list[str]) -> LoadedReport | None:
        """What the engine reports it did at start-up (layers, buffers, context); None: it reports nothing."""
        return None

    @abc.abstractmethod
    def fixes_for(self, kind: Kind, facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
        """Parameter changes, in the engine's own keys, that answer a diagnosis of ``kind``; best first.

        ``plan`` is None for a log read without a launch (``ember diagnose``): the fixes then
        come from the log's own numbers (``facts``) and the engine's defaults."""

    def context(self, plan: PlanView | None) -> ContextShape:
        """The plan's context: the context role's value (unset or 0: the trained context), one per request."""
        total = plan_param(plan, self.roles.context) or trained_context(plan)
        total = int(total) if total else None
        return ContextShape(total, 1, total)

    def memory_estimate(self, plan: PlanView, context: int) -> FitEstimate | None:
        """The memory the plan would need with ``context`` tokens; None when the engine cannot tell."""
        return None

    def in_ember_terms(self, message: str, tokens: int | None = None) -> str:
        """``message`` with the flags the engine names ("start it with `--embeddings`") in Ember's terms;
        ``tokens``: the context size to name when raising it, if already computed."""
        return terms.in_ember_terms(message, self.name, self.roles.context, tokens)

    def context_override(self, tokens: int) -> dict[str, object]:
        """The parameter change that sets the context to ``tokens`` ({} for an engine without one)."""
        return {self.roles.context: tokens} if self.roles.context else {}
