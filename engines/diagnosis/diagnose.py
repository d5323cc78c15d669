"""Guided errors: turn the evidence of a failure into a :class:`Diagnosis` with fixes.

Evidence is an exception (``EngineStartError``, ``EngineHTTPError``,
``StreamBroken``, ``PlanError``, ``ParamError``, ``ModelError``), the engine's
log lines (since launch, or since a request when the caller passes
``log_offset``), the child's exit status, and the launch plan. Structured
fields are trusted first (llama.cpp's ``exceed_context_size_error`` carries
``n_prompt_tokens`` and ``n_ctx``); log and message patterns second
(:mod:`engines.diagnosis.patterns`, ordered, specific before generic).

Each diagnosis has a kind, a one-line title, an explanation with the numbers,
the numbers themselves (``facts``) and fixes. A fix is a concrete parameter
change (``{"n_ctx": 4096}``) applied by ``LaunchPlan.with_changes`` and a
relaunch, or an action without changes (start a new conversation, pick
another file). The text for people is written here once, from the structure;
the CLI prints :meth:`Diagnosis.render_text`, ``--json`` prints
:meth:`Diagnosis.to_dict`, the desktop shows the same fields in a dialog.

Other engines
-------------
A backend module (``engines.running.backends.<engine>``) may define ``LOG_PATTERNS``,
a list of ``(regex, kind)`` or ``(regex, kind, facts_dict)`` tuples with the
same meaning as :data:`engines.diagnosis.patterns.LLAMACPP`: regex searched
in one log line or error message (case-insensitive when given as a string),
``kind`` a :class:`Kind` value such as ``"oom_load"``, named groups and the
optional dict become facts. They are consulted before the llama.cpp table.
Example for vLLM::

    LOG_PATTERNS = [
        (r"torch\\.OutOfMemoryError: CUDA out of memory", "oom_load", {"memory": "gpu"}),
        (r"No available memory for the cache blocks", "oom_load", {"memory": "gpu"}),
        (r"is larger than the maximum number of tokens", "context_exceeded"),
    ]

It may also define ``fixes_for(kind, facts, plan) -> list[dict]`` returning
``{"label", "changes", "note"}`` dicts in its own parameter keys (``facts``
holds the named groups of the matched line). For any engine but llama.cpp
those replace the parameter fixes computed here (which use llama.cpp's keys);
fixes without changes (new conversation, choose a model...) are kept.
"""
from __future__ import annotations

import enum
import functools
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field

from engines.diagnosis import patterns

log = logging.getLogger(__name__)

TAIL_LINES = 20
#: tokens kept free for the answer when computing a context that fits a prompt
REPLY_ROOM = 512
#: share of free memory a computed n_ctx may plan to use
MEMORY_SHARE = 0.8
MIB = 1024 ** 2
GIB = 1024 ** 3


class Kind(str, enum.Enum):
    CONTEXT_EXCEEDED = "context_exceeded"
    KV_CACHE_FULL = "kv_cache_full"
    IMAGE_FAILED = "image_failed"
    OOM_LOAD = "oom_load"
    REPLY_CUT_SHORT = "reply_cut_short"
    INVALID_MODEL = "invalid_model"
    MODEL_NOT_DOWNLOADED = "model_not_downloaded"
    ENGINE_CRASHED = "engine_crashed"
    ENGINE_MISSING = "engine_missing"
    NOT_SUPPORTED = "not_supported"
    PORT_IN_USE = "port_in_use"
    STARTUP_FAILED = "startup_failed"
    AUTH_FAILED = "auth_failed"
    UNREACHABLE = "unreachable"
    CONNECTION_LOST = "connection_lost"
    BAD_PARAMETER = "bad_parameter"
    SERVER_ERROR = "server_error"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


@dataclass
class Fix:
    """One way out: parameter changes for a relaunch, or an action for the app."""

    label: str
    changes: dict[str, object] = field(default_factory=dict)
    note: str = ""
    action: str | None = None  # relaunch | new_conversation | choose_model | redownload | install | edit_endpoint | ...

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cli_hint(self) -> str:
        return " ".join(f"--set {k}={_cli_value(v)}" for k, v in self.changes.items())


@dataclass
class Diagnosis:
    kind: Kind
    title: str
    explanation: str
    facts: dict[str, object] = field(default_factory=dict)
    fixes: list[Fix] = field(default_factory=list)
    log_path: str | None = None
    log_tail: list[str] = field(default_factory=list)

    @property
    def primary_fix(self) -> Fix | None:
        return self.fixes[0] if self.fixes else None

    def to_dict(self) -> dict:
        return {"kind": str(self.kind), "title": self.title, "explanation": self.explanation,
                "facts": dict(self.facts), "fixes": [f.to_dict() for f in self.fixes],
                "log_path": self.log_path, "log_tail": list(self.log_tail)}

    def render_text(self, tail: int = 10) -> str:
        out = [f"Error: {self.title}", "", _indent(self.explanation, "  ")]
        if self.fixes:
            out += ["", "What you can do:"]
            for i, f in enumerate(self.fixes, 1):
                line = f"  {i}. {f.label}"
                if f.changes:
                    line += f"   ({f.cli_hint})"
                out.append(line)
                if f.note:
                    out.append(_indent(f.note, "     "))
        if self.log_path:
            out += ["", f"Engine log: {self.log_path}"]
        if self.log_tail and tail:
            out += ["  last lines:"] + ["    " + l for l in self.log_tail[-tail:]]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render_text()


def _cli_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + l if l else l for l in text.splitlines())


def _n(x) -> str:
    return f"{int(x):,}"


def _gib(b: float) -> str:
    return f"{b / GIB:,.1f} GiB" if b >= GIB else f"{b / MIB:,.0f} MiB"


# -- patterns ---------------------------------------------------------------------------

@dataclass
class Match:
    kind: str
    facts: dict[str, object]
    line: str
    rank: int


_compiled: dict[tuple[int, int], list[tuple[re.Pattern, str, dict]]] = {}


def _compile(table: list) -> list[tuple[re.Pattern, str, dict]]:
    key = (id(table), len(table))
    if key not in _compiled:
        out = []
        for entry in table:
            regex, kind = entry[0], entry[1]
            extra = dict(entry[2]) if len(entry) > 2 and entry[2] else {}
            pat = regex if isinstance(regex, re.Pattern) else re.compile(regex, re.IGNORECASE)
            out.append((pat, str(kind), extra))
        _compiled[key] = out
    return _compiled[key]


def patterns_for(engine: str | None) -> list[tuple[re.Pattern, str, dict]]:
    """The engine's own ``LOG_PATTERNS`` (if its backend module has any), then llama.cpp's, then HTTP's."""
    tables: list[list] = []
    if engine:
        try:
            from engines.running.launch import backend
            extra = getattr(backend(engine), "LOG_PATTERNS", None)
            if extra:
                tables.append(extra)
        except Exception as exc:  # a missing backend must not hide the diagnosis
            log.info("no log patterns from backend %s: %s", engine, exc)
    tables += [patterns.LLAMACPP, patterns.HTTP]
    out = []
    for t in tables:
        out += _compile(t)
    return out


def classify_lines(lines: list[str], engine: str | None = None) -> list[Match]:
    """Every line that matches a pattern, with the rank of the pattern (lower = more specific)."""
    pats = patterns_for(engine)
    found = []
    for line in lines:
        for rank, (pat, kind, extra) in enumerate(pats):
            m = pat.search(line)
            if m:
                facts = dict(extra)
                facts.update({k: v for k, v in m.groupdict().items() if v is not None})
                found.append(Match(kind, facts, line.strip(), rank))
                break
    return found


def best_match(lines: list[str], engine: str | None = None, kinds: set[str] | None = None) -> Match | None:
    matches = [m for m in classify_lines(lines, engine) if kinds is None or m.kind in kinds]
    return min(matches, key=lambda m: m.rank) if matches else None


# -- reading the evidence -----------------------------------------------------------------

def _read_log(path) -> list[str]:
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


def _proc_lines(proc, offset: int = 0, settle: float = 0.3) -> list[str]:
    """The engine's lines since ``offset``; waits briefly for the child to flush the error line."""
    if proc is None:
        return []
    lines = proc.log_lines(offset)
    if settle and not best_match(lines, getattr(proc, "engine", None)):
        time.sleep(settle)
        lines = proc.log_lines(offset)
    return lines


def _tail(lines: list[str], n: int = TAIL_LINES) -> list[str]:
    return [l for l in lines if not l.startswith("# ember launch")][-n:]


# -- numbers from the plan ----------------------------------------------------------------

def _p(plan, key, default=None):
    if plan is None:
        return default
    v = plan.params.get(key, default)
    return default if v is None else v


def _trained(plan) -> int | None:
    return getattr(getattr(plan, "model", None), "context_length", None) if plan else None


def _slots(plan) -> int:
    return max(1, int(_p(plan, "n_parallel", 1) or 1))


def _unified(plan) -> bool:
    return bool(_p(plan, "kv_unified", False))


#: the context-length parameter of other engines' plans (llama.cpp's is n_ctx)
_CTX_KEYS = ("max_model_len", "context_length", "context_len", "max_seq_len", "max_kv_size")


def _llamacpp(plan) -> bool:
    return getattr(plan, "engine", "llamacpp") in ("llamacpp", None)


def _n_ctx(plan) -> int | None:
    v = _p(plan, "n_ctx")
    if plan is not None and not _llamacpp(plan):
        v = next((_p(plan, k) for k in _CTX_KEYS if _p(plan, k)), None)
    if v in (None, 0):
        return _trained(plan)
    return int(v)


#: llama.cpp (xllamacpp 2026.10) gives each slot at least 256 tokens: n_ctx 256 with n_parallel 2 becomes
#: 512 in all ("n_ctx is not divisible by n_seq_max - rounding ..."), 256 per slot.
MIN_SLOT_CTX = 256


def _slot_ctx(plan) -> int | None:
    """Tokens one slot holds, as llama.cpp will really set it."""
    n_ctx = _n_ctx(plan)
    if not n_ctx:
        return None
    return n_ctx if _unified(plan) else max(MIN_SLOT_CTX, n_ctx // _slots(plan))


def _ctx_words(plan, slot_ctx: int | None = None) -> str:
    """'(n_ctx 2,048 / n_parallel 1)', with the value llama.cpp really used when it differs from the setting."""
    n_ctx, slots = _n_ctx(plan), _slots(plan)
    if not _llamacpp(plan):
        return f"(context length {_n(n_ctx)})" if n_ctx else ""
    if _unified(plan):
        return f"(n_ctx {_n(n_ctx)}, shared by all slots)"
    slot_ctx = slot_ctx or _slot_ctx(plan)
    if slot_ctx and slot_ctx * slots != n_ctx:
        return (f"(n_ctx {_n(slot_ctx * slots)} / n_parallel {slots}; llama.cpp changed the n_ctx {_n(n_ctx)} "
                "you set)")
    return f"(n_ctx {_n(n_ctx)} / n_parallel {slots})"


def _round_up(n: int, step: int = 1024) -> int:
    return max(step, int(math.ceil(n / step)) * step)


def _pow2_floor(n: int) -> int:
    return 1 << max(0, int(n).bit_length() - 1)


@functools.lru_cache(maxsize=8)
def _gguf(path: str):
    from engines.machine import gguf_info
    return gguf_info.read(path, check_data=False)


def _memory_budget(plan) -> int | None:
    hw = getattr(plan, "hardware", None)
    if hw is None:
        return None
    ram = hw.ram_available_bytes or hw.ram_total_bytes or 0
    vram = sum((g.memory_free_bytes or 0) for g in getattr(hw, "gpus", []) if getattr(g, "usable_by_llamacpp", False))
    return (ram + vram) or None


def _estimate(plan, n_ctx: int, n_parallel: int | None = None, cache_type: str | None = None):
    """fit.estimate for the plan's model with other settings; None when it cannot be computed."""
    if plan is None or not getattr(plan.model, "path", None) or plan.model.format != "gguf":
        return None
    try:
        from engines.machine import fit
        return fit.estimate(_gguf(plan.model.path), plan.hardware, n_ctx, n_parallel or _slots(plan),
                            cache_type or str(_p(plan, "cache_type_k", "f16")))
    except Exception as exc:
        log.info("memory estimate failed: %s", exc)
        return None


def _fits(plan, n_ctx: int, n_parallel: int | None = None, cache_type: str | None = None) -> tuple[bool, int | None]:
    est = _estimate(plan, n_ctx, n_parallel, cache_type)
    budget = _memory_budget(plan)
    if est is None or not budget or not est.total_bytes:
        return True, None
    return est.total_bytes <= budget * MEMORY_SHARE, est.total_bytes


def _kv_note(plan, new_ctx: int) -> str:
    """' KV cache 78 MiB instead of 39 MiB.': the memory a context change costs or saves (estimate)."""
    now, new = _estimate(plan, _n_ctx(plan) or 0), _estimate(plan, new_ctx)
    if new is None or not new.kv_cache_bytes:
        return ""
    if now is None or not now.kv_cache_bytes:
        return f" KV cache about {_gib(new.kv_cache_bytes)}."
    return f" KV cache about {_gib(new.kv_cache_bytes)} instead of {_gib(now.kv_cache_bytes)}."


def _ctx_for_slot(plan, per_slot: int) -> int:
    """The n_ctx that gives each slot ``per_slot`` tokens."""
    return per_slot if _unified(plan) else per_slot * _slots(plan)


def _gpu_in_play(plan) -> bool:
    if plan is None:
        return False
    hw = plan.hardware
    usable = [g for g in getattr(hw, "gpus", []) if getattr(g, "usable_by_llamacpp", False)]
    return bool(usable) and int(_p(plan, "n_gpu_layers", 0) or 0) != 0


def _fewer_layers_fix(plan, alloc_bytes: float | None = None) -> Fix | None:
    """Offload fewer layers: enough to free the failed allocation, else a quarter fewer than now."""
    if not _gpu_in_play(plan):
        return None
    est = plan.fit
    total = (est.total_layers if est and est.total_layers else (plan.model.block_count or 0) + 1) or None
    current = int(_p(plan, "n_gpu_layers", -1))
    if current < 0 or (total and current > total):
        current = est.gpu_layers if est and est.gpu_layers else (total or 0)
    if current <= 0:
        return None
    drop = max(1, math.ceil(current * 0.25))
    if alloc_bytes and est and est.weights_bytes and total:
        per_layer = est.weights_bytes / total
        drop = max(drop, math.ceil(alloc_bytes / per_layer) + 1)
    new = max(0, current - drop)
    note = f"{_n(new)} of {_n(total or current)} layers on the GPU instead of {_n(current)}; the rest run on the CPU, slower."
    return Fix(f"Put fewer layers on the GPU ({new})", {"n_gpu_layers": new}, note)


def _smaller_ctx(plan, start: int, floor: int = 1024) -> int | None:
    """The largest power-of-two n_ctx <= start that the memory estimate says fits."""
    c = _pow2_floor(max(floor, start))
    while c > floor:
        ok, _ = _fits(plan, c)
        if ok:
            break
        c //= 2
    return c


# -- kinds ----------------------------------------------------------------------------------

def _context_exceeded(plan, n_prompt: int | None, slot_ctx: int | None, message: str | None = None,
                      multimodal: bool = False) -> Diagnosis:
    n_ctx = _n_ctx(plan)
    slots = _slots(plan)
    if slot_ctx is None and n_ctx:
        slot_ctx = _slot_ctx(plan)
    facts: dict[str, object] = {"n_prompt_tokens": n_prompt, "n_ctx_slot": slot_ctx, "n_ctx": n_ctx,
                                "n_parallel": slots, "n_ctx_train": _trained(plan)}
    facts = {k: v for k, v in facts.items() if v is not None}
    if n_prompt and slot_ctx:
        first = f"Your message needs {_n(n_prompt)} tokens; each slot holds {_n(slot_ctx)}"
    elif slot_ctx:
        first = f"The conversation no longer fits in the context; each slot holds {_n(slot_ctx)} tokens"
    else:
        first = "The conversation no longer fits in the engine's context"
    if n_ctx and plan is not None:
        first += f" {_ctx_words(plan, slot_ctx)}."
    else:
        first += "."
    lines = [first, "The engine refuses a request longer than one slot's context; it does not drop old turns by itself."]
    if multimodal or getattr(getattr(plan, "model", None), "has_vision", False):
        lines.append("With images in the conversation (multimodal), context shift is off, so the context must hold "
                     "the whole conversation.")
    fixes: list[Fix] = []
    trained = _trained(plan)
    need = (n_prompt + REPLY_ROOM) if n_prompt else (2 * slot_ctx if slot_ctx else None)
    if plan is not None and need:
        if trained and n_prompt and n_prompt >= trained:
            lines.append(f"That is more than the model can read at once ({_n(trained)} tokens, its trained context).")
            per_slot = None
        elif trained and need > trained:
            per_slot = trained  # all the model can take; little room left for the answer
        else:
            per_slot = _round_up(need)
            if trained:
                per_slot = min(per_slot, trained)
        # fewer slots: no extra memory
        if n_ctx and slots > 1 and not _unified(plan):
            fewer = n_ctx // need
            if 1 <= fewer < slots:
                fixes.append(Fix(f"Use fewer parallel slots ({fewer})", {"n_parallel": fewer},
                                 f"Each slot then holds {_n(n_ctx // fewer)} tokens; "
                                 f"{fewer} request{'s' if fewer > 1 else ''} can run at the same time."))
        if per_slot and (not slot_ctx or per_slot > slot_ctx):
            new_ctx = _ctx_for_slot(plan, per_slot)
            ok, need_bytes = _fits(plan, new_ctx)
            note = (f"Each slot then holds {_n(per_slot)} tokens: room for this message and about "
                    f"{_n(max(0, per_slot - (n_prompt or 0)))} tokens of answer.")
            note += _kv_note(plan, new_ctx)
            if not ok:
                note += " This may not fit in this computer's memory."
            facts["suggested_n_ctx"] = new_ctx
            fixes.append(Fix(f"Raise the context to {_n(new_ctx)} tokens", {"n_ctx": new_ctx}, note))
    fixes.append(Fix("Start a new conversation", {}, "Or shorten the message, or delete earlier turns.",
                     action="new_conversation"))
    if message:
        facts["message"] = message
    return Diagnosis(Kind.CONTEXT_EXCEEDED, "The conversation is longer than the engine's context",
                     "\n".join(lines), facts, fixes)


def _kv_cache_full(plan, cause: str | None, message: str | None) -> Diagnosis:
    n_ctx = _n_ctx(plan)
    slots = _slots(plan)
    facts: dict[str, object] = {k: v for k, v in {"n_ctx": n_ctx, "n_parallel": slots, "kv_unified": _unified(plan),
                                                  "cause": cause or "memory", "message": message}.items()
                                if v is not None}
    fixes: list[Fix] = []
    trained = _trained(plan)
    if cause == "space":
        shared = _unified(plan) and slots > 1
        text = (f"The engine's KV cache (the memory of the conversation, {_n(n_ctx)} tokens"
                if n_ctx else "The engine's KV cache (the memory of the conversation")
        text += (f", shared by {slots} slots) filled up while answering several requests at once."
                 if shared else ") filled up while answering.")
        text += "\nThe answer stopped because there was no room left for the next tokens."
        if n_ctx and plan is not None:
            cap = trained * (1 if _unified(plan) else slots) if trained else None
            new = _round_up(n_ctx * 2)
            if cap:
                new = min(new, max(cap, n_ctx))
            if new > n_ctx:
                ok, need_bytes = _fits(plan, new)
                note = "More room for answers that run at the same time."
                note += _kv_note(plan, new)
                fixes.append(Fix(f"Raise the context to {_n(new)} tokens", {"n_ctx": new}, note))
        if slots > 1:
            fixes.append(Fix("Answer one request at a time", {"n_parallel": 1},
                             "Other requests wait their turn; each gets the whole context."))
    else:
        text = ("The engine ran out of memory for the KV cache (the memory of the conversation) while "
                "answering, so it could not decode the next batch.")
        if n_ctx:
            text += f"\nThe context is {_n(n_ctx)} tokens over {slots} slot{'s' if slots > 1 else ''}."
        if n_ctx and n_ctx > 1024:
            new = max(1024, (n_ctx // 2) // 1024 * 1024)
            fixes.append(Fix(f"Lower the context to {_n(new)} tokens", {"n_ctx": new},
                             "A smaller KV cache needs less memory; long conversations then need a new start sooner."))
        fewer = _fewer_layers_fix(plan)
        if fewer:
            fixes.append(fewer)
        if n_ctx and plan is not None:
            more = min(256, slots * 2)
            fixes.append(Fix(f"Raise n_parallel to {more}", {"n_parallel": more},
                             f"Each request then gets {_n(n_ctx // more)} tokens of context, so it needs less "
                             "memory at a time. This does not help if you send one request at a time "
                             "(serial use): it makes no answer faster."))
    fixes.append(Fix("Start a new conversation", {}, "A shorter conversation needs less of the cache.",
                     action="new_conversation"))
    return Diagnosis(Kind.KV_CACHE_FULL, "The engine's KV cache is full", text, facts, fixes)


def _image_failed(plan, message: str | None) -> Diagnosis:
    n_ctx = _n_ctx(plan)
    facts = {k: v for k, v in {"n_ctx": n_ctx, "message": message}.items() if v is not None}
    text = ("The engine could not encode the image: most likely the GPU ran out of memory while processing it.")
    fixes = []
    if n_ctx and n_ctx > 1024:
        new = max(1024, (n_ctx // 2) // 1024 * 1024)
        text += f"\nThe context ({_n(n_ctx)} tokens) holds memory the image encoder then lacks."
        fixes.append(Fix(f"Lower the context to {_n(new)} tokens", {"n_ctx": new},
                         "Frees memory for the image encoder."))
    fewer = _fewer_layers_fix(plan)
    if fewer:
        fixes.append(fewer)
    fixes.append(Fix("Send a smaller image", {}, "A smaller picture needs less memory to encode.", action="edit_message"))
    return Diagnosis(Kind.IMAGE_FAILED, "The engine could not process the image", text, facts, fixes)


def _oom_load(plan, facts_in: dict, predicted: bool = False) -> Diagnosis:
    n_ctx = _n_ctx(plan)
    slots = _slots(plan)
    facts: dict[str, object] = {k: v for k, v in facts_in.items() if k != "kv"}  # backends' fixes read them all
    est = _estimate(plan, n_ctx, slots) if n_ctx else None
    budget = _memory_budget(plan)
    alloc = None
    if facts_in.get("alloc_mib"):
        alloc = float(facts_in["alloc_mib"]) * MIB
    elif facts_in.get("alloc_mb"):
        alloc = float(facts_in["alloc_mb"]) * MIB  # llama.cpp's "MB" are MiB
    on_gpu = facts_in.get("memory") == "gpu"
    where = "the GPU's memory" if on_gpu else "memory"
    parts = [f"The model could not be loaded: {where} ran out while allocating "
             + ("the KV cache." if facts_in.get("kv") or "kv cache" in str(facts_in.get("log_line", "")).lower()
                else "its buffers.")]
    if alloc:
        parts.append(f"It tried to allocate {_gib(alloc)}.")
        facts["alloc_bytes"] = int(alloc)
    if n_ctx:
        facts["n_ctx"] = n_ctx
        facts["n_parallel"] = slots
    if est is not None:
        facts.update({"kv_cache_bytes": est.kv_cache_bytes, "weights_bytes": est.weights_bytes,
                      "estimated_bytes": est.total_bytes})
        parts.append(f"Estimate for n_ctx {_n(n_ctx)}: weights {_gib(est.weights_bytes)}, "
                     f"KV cache {_gib(est.kv_cache_bytes)}.")
    vram = sum((g.memory_free_bytes or 0) for g in plan.hardware.llamacpp_gpus()) if plan is not None else 0
    if on_gpu and vram:
        facts["gpu_memory_free_bytes"] = vram
        parts.append(f"GPU memory free before loading: {_gib(vram)}.")
    elif budget:
        facts["memory_free_bytes"] = budget
        parts.append(f"Free memory (RAM{' and GPU' if _gpu_in_play(plan) else ''}): {_gib(budget)}.")
    trained = _trained(plan)
    if trained and n_ctx and n_ctx > trained:
        parts.append(f"n_ctx {_n(n_ctx)} is also larger than the model's trained context ({_n(trained)}).")
        facts["n_ctx_train"] = trained
    fixes: list[Fix] = []
    ctx_fix = None
    if n_ctx and n_ctx > 1024:
        start = n_ctx // 2
        if trained:
            start = min(start, trained * (1 if _unified(plan) else slots))
        new = _smaller_ctx(plan, start)
        if new and new < n_ctx:
            ok, need = _fits(plan, new)
            note = "A smaller context needs a smaller KV cache."
            note += _kv_note(plan, new)
            ctx_fix = Fix(f"Lower the context to {_n(new)} tokens", {"n_ctx": new}, note)
    fewer = _fewer_layers_fix(plan, alloc)
    kv_big = est is not None and est.kv_cache_bytes > est.weights_bytes
    if kv_big or not on_gpu:
        fixes += [f for f in (ctx_fix, fewer) if f]
    else:
        fixes += [f for f in (fewer, ctx_fix) if f]
    if str(_p(plan, "cache_type_k", "f16")) in ("f16", "f32", "bf16") and plan is not None:
        fixes.append(Fix("Quantize the KV cache (q8_0)", {"cache_type_k": "q8_0", "cache_type_v": "q8_0"},
                         "Halves the KV cache's memory with little loss of quality."))
    fixes.append(Fix("Use a smaller quantization of the model", {}, _smaller_quant_note(plan),
                     action="choose_model"))
    title = ("This model will not fit in memory with these settings" if predicted
             else "Not enough memory to load the model")
    return Diagnosis(Kind.OOM_LOAD, title, " ".join(parts[:1]) + ("\n" + " ".join(parts[1:]) if parts[1:] else ""),
                     facts, fixes)


def _smaller_quant_note(plan) -> str:
    model = getattr(plan, "model", None)
    if model is not None and getattr(model, "format", "gguf") != "gguf":
        return "A quantized version of the model (AWQ, GPTQ) or a smaller model needs less memory."
    quant = str(getattr(model, "quantization", "") or "").upper()
    if quant.startswith(("F32", "F16", "BF16", "Q8", "Q6", "Q5")):
        return f"This file is {quant}; the same model in Q4_K_M needs about half the memory or less for its weights."
    if quant.startswith("Q4") or quant.startswith("IQ4"):
        return f"This file is {quant}; Q3_K_M or a smaller model needs less memory, at some cost in quality."
    return "For example Q4_K_M instead of Q8_0: the weights take about half the memory."


_INVALID_WORDS = {
    "missing": "The model file does not exist.",
    "empty": "The model file is empty (or is a folder): the download probably failed.",
    "not_gguf": "This file is not a GGUF model file (it does not start with 'GGUF').",
    "truncated": "The model file is incomplete: it ends before all its data (an interrupted download?).",
    "corrupt": "The model file is corrupted.",
    "unknown_architecture": "This version of llama.cpp does not know the model's architecture{arch}.",
    "unsupported": "This GGUF version is not supported by the installed llama.cpp.",
    "load_error": "llama.cpp could not load the model: {detail}",
}


def _invalid_model(problem: str, facts: dict, path: str | None = None, detail: str | None = None) -> Diagnosis:
    arch = facts.get("architecture")
    text = _INVALID_WORDS.get(problem, _INVALID_WORDS["corrupt"]).format(
        arch=f" ('{arch}')" if arch else "", detail=detail or facts.get("detail", "unknown error"))
    if path:
        text += f"\nFile: {path}"
    fixes = []
    if problem in ("unknown_architecture", "unsupported"):
        fixes.append(Fix("Update the llama.cpp engine", {}, "pip install --upgrade xllamacpp", action="install"))
        fixes.append(Fix("Choose another model", {}, "Pick a model whose architecture this engine supports.",
                         action="choose_model"))
    else:
        again = Fix("Download the model again", {},
                    "Delete the file and download it again (from the models window or `ember pull`).",
                    action="redownload")
        other = Fix("Choose another file", {}, "Pick a complete .gguf model file.", action="choose_model")
        fixes += [other, again] if problem in ("not_gguf", "missing") else [again, other]
    facts = dict(facts, problem=problem)
    if path:
        facts["path"] = path
    return Diagnosis(Kind.INVALID_MODEL, "This is not a usable model file", text, facts, fixes)


def _crashed(plan, status, lines: list[str], during: str) -> Diagnosis:
    facts: dict[str, object] = {}
    text = f"The engine stopped unexpectedly {during}"
    if status is not None:
        facts.update({"exit_code": status.code, "signal": status.signal})
        text = f"The engine {status.sentence} {during}"
        if status.signal:
            import signal as _signal
            try:
                facts["signal_name"] = _signal.Signals(status.signal).name
            except ValueError:
                pass
    text += "."
    if status is not None and status.signal == 9:
        text += ("\nIf you did not stop it yourself, the system may have run out of memory "
                 "(the kernel's out-of-memory killer sends SIGKILL).")
    m = best_match(lines, getattr(plan, "engine", None), {"engine_crashed", "oom_load"})
    if m:
        text += f"\nLast error in the log: {m.line}"
        facts.update(m.facts)
    fixes = [Fix("Restart the engine", {}, "Relaunch with the same settings and send the message again.",
                 action="relaunch")]
    n_ctx = _n_ctx(plan)
    if (m is not None and m.kind == "oom_load" or status is not None and status.signal == 9) and n_ctx \
            and n_ctx > 2048:
        new = max(2048, (n_ctx // 2) // 1024 * 1024)
        fixes.append(Fix(f"Restart with a smaller context ({_n(new)} tokens)", {"n_ctx": new},
                         "Needs less memory, in case memory ran out."))
    return Diagnosis(Kind.ENGINE_CRASHED, "The engine crashed", text, facts, fixes)


# -- entry points ---------------------------------------------------------------------------

def _diagnose_log(lines: list[str], plan=None, phase: str = "start", status=None, path: str | None = None,
                  model_path: str | None = None) -> Diagnosis | None:
    engine = getattr(plan, "engine", None)
    matches = classify_lines(lines, engine)
    if not matches:
        return None
    best = min(matches, key=lambda m: m.rank)
    kind, facts = best.kind, dict(best.facts, log_line=best.line)
    memory_lines = [m for m in matches if m.kind == "oom_load"]
    if phase == "start" and kind in ("kv_cache_full", "image_failed", "context_exceeded"):
        kind = "oom_load"  # the warm-up decode failed: memory ran out while loading
    if phase == "run" and kind == "oom_load":
        kind = "kv_cache_full"
        facts["cause"] = "memory"
    if kind == "kv_cache_full" and memory_lines:
        facts["cause"] = "memory"
    if kind == "oom_load":
        for m in memory_lines:  # numbers may sit on another line than the best one
            for k, v in m.facts.items():
                facts.setdefault(k, v)
        if any("kv cache" in m.line.lower() for m in memory_lines):
            facts["kv"] = True
        d = _oom_load(plan, facts)
    elif kind == "invalid_model":
        d = _invalid_model(str(facts.get("problem", "corrupt")), {k: v for k, v in facts.items() if k != "problem"},
                           model_path or getattr(getattr(plan, "model", None), "path", None))
    elif kind == "port_in_use":
        port = facts.get("port")
        d = Diagnosis(Kind.PORT_IN_USE, "The engine's network port is already in use",
                      f"Another program is listening on {'port ' + str(port) if port else 'the port'} "
                      "(127.0.0.1), so the engine could not open its server.",
                      {k: int(v) if k == "port" else v for k, v in facts.items()},
                      [Fix("Try again on another port", {}, "Ember picks a free port on each launch.",
                           action="relaunch")])
    elif kind == "kv_cache_full":
        d = _kv_cache_full(plan, facts.get("cause"), None)
        d.facts["log_line"] = best.line
    elif kind == "image_failed":
        d = _image_failed(plan, None)
        d.facts["log_line"] = best.line
    elif kind == "context_exceeded":
        d = _context_exceeded(plan, _int(facts.get("n_prompt_tokens")), _int(facts.get("n_ctx_slot")))
    elif kind == "engine_crashed":
        d = _crashed(plan, status, lines, "while starting" if phase == "start" else "while answering")
    elif kind == "bad_parameter":
        d = Diagnosis(Kind.BAD_PARAMETER, "The engine refused a parameter",
                      f"The engine said: {best.line}", facts,
                      [Fix("Use n_parallel 1", {"n_parallel": 1}, "") if facts.get("parameter") == "n_parallel"
                       else Fix("Check the parameters", {}, "", action="edit_parameters")])
    elif kind == "auth_failed":
        d = _auth(None)
    elif kind == "startup_failed":
        d = _startup_failed(plan, status, best.line)
    else:
        return None
    d.log_path = str(path) if path else None
    d.log_tail = _tail(lines)
    return d


def _int(v) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _startup_failed(plan, status, line: str | None, timed_out: bool = False, reason: str | None = None) -> Diagnosis:
    facts: dict[str, object] = {}
    if status is not None:
        facts.update({"exit_code": status.code, "signal": status.signal})
    if timed_out:
        facts["timed_out"] = True
        text = reason or "The engine started but did not answer in time."
        fixes = [Fix("Try again", {}, "A large model on a slow disk can take minutes to load the first time.",
                     action="relaunch")]
    else:
        text = "The engine could not start" + (f" ({status.sentence})" if status is not None else "") + "."
        if line:
            text += f"\nThe log says: {line}"
        fixes = [Fix("Try again", {}, "", action="relaunch")]
    fixes.append(Fix("Show the engine log", {}, "The full log usually names the cause.", action="show_log"))
    return Diagnosis(Kind.STARTUP_FAILED, "The engine could not start", text, facts, fixes)


def _auth(message: str | None, status: int | None = None) -> Diagnosis:
    return Diagnosis(Kind.AUTH_FAILED, "The server refused the API key",
                     "The server answered " + (f"HTTP {status}" if status else "that the key is wrong")
                     + (f": {message}" if message else "") + "\nCheck the API key of this endpoint.",
                     {k: v for k, v in {"status": status, "message": message}.items() if v is not None},
                     [Fix("Edit the endpoint's API key", {}, "", action="edit_endpoint")])


def diagnose_log(lines: list[str], plan=None, phase: str = "start", status=None, path: str | None = None,
                 model_path: str | None = None) -> Diagnosis | None:
    """Diagnose from log lines alone (``phase`` "start" or "run"); None if nothing is recognised."""
    return _for_engine(_diagnose_log(lines, plan, phase, status, path, model_path), plan)


def diagnose_exception(exc: BaseException, proc=None, plan=None, log_offset: int = 0) -> Diagnosis | None:
    """The diagnosis for any failure Ember meets; None only when there is nothing useful to say.

    ``log_offset``: the engine log's size when the failed request began (``proc.log_size()``), so only
    the lines of that request are read."""
    return _for_engine(_diagnose_exception(exc, proc, plan, log_offset), plan)


def _for_engine(d: Diagnosis | None, plan) -> Diagnosis | None:
    """Parameter fixes in the engine's own keys: llama.cpp's are computed here; another engine's come from
    its backend module's ``fixes_for(kind, facts, plan) -> [{"label", "changes", "note"}]``. Fixes without
    changes (actions) are kept for every engine."""
    engine = getattr(plan, "engine", None)
    if d is None or not engine or engine == "llamacpp":
        return d
    own: list[Fix] = []
    try:
        from engines.running.launch import backend
        fn = getattr(backend(engine), "fixes_for", None)
        for f in (fn(str(d.kind), dict(d.facts), plan) if fn else []):
            own.append(f if isinstance(f, Fix) else Fix(f.get("label", ""), dict(f.get("changes") or {}),
                                                        f.get("note", ""), f.get("action")))
    except Exception as exc:
        log.info("fixes from backend %s failed: %s", engine, exc)
    d.fixes = own + [f for f in d.fixes if not f.changes]
    return d


def _diagnose_exception(exc: BaseException, proc=None, plan=None, log_offset: int = 0) -> Diagnosis | None:
    from engines.chat import client
    from engines.running import launch
    from engines.models import store
    from engines.running import params
    from engines.running import supervisor
    try:
        if isinstance(exc, supervisor.EngineStartError):
            return _from_start_error(exc, plan)
        if isinstance(exc, client.EngineHTTPError):
            return _from_http(exc, proc, plan, log_offset)
        if isinstance(exc, client.StreamBroken):
            return _from_broken(exc, proc, plan, log_offset)
        if isinstance(exc, launch.PlanError):
            return _from_plan_error(exc)
        if isinstance(exc, params.ParamError):
            fixes = [Fix(f"Use {s}", {}, f"Did you mean {s}?", action="edit_parameters") for s in exc.suggestions]
            nearest = _nearest_valid(exc.key, exc.value)
            if nearest is not None:
                fixes.insert(0, Fix(f"Use {exc.key} = {nearest}", {exc.key: nearest}, "The nearest valid value."))
            fixes = fixes or [Fix("Change the parameter", {}, "", action="edit_parameters")]
            return Diagnosis(Kind.BAD_PARAMETER, f"The parameter {exc.key or ''} cannot be used".replace("  ", " "),
                             exc.message, {"key": exc.key, "value": _jsonable(exc.value),
                                           "suggestions": list(exc.suggestions)}, fixes)
        if isinstance(exc, store.ModelError):
            if exc.kind == "not_downloaded":
                return Diagnosis(Kind.MODEL_NOT_DOWNLOADED, f"{exc.name} is not downloaded yet",
                                 f"{exc.name} {exc.problem}", {"model": exc.name},
                                 [Fix("Download it", {}, f"ember pull {exc.name}", action="download")])
            problem = {"not_model": "not_gguf", "invalid": "corrupt"}.get(exc.kind, exc.kind)
            d = _invalid_model(problem, {"model": exc.name})
            d.explanation = f"{exc.name}: {exc.problem}"
            return d
        if isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, FileNotFoundError):
            return Diagnosis(Kind.UNREACHABLE, "Cannot reach the server", str(exc), {},
                             [Fix("Try again", {}, "", action="retry")])
    except Exception:  # a diagnosis must never hide the original error
        log.exception("diagnosis failed for %r", exc)
        return None
    return None


#: valid ranges of parameters that params.py refuses before launch: key -> (lowest, highest)
_RANGES = {"n_parallel": (1, 256), "n_ctx": (0, None), "n_gpu_layers": (-1, None)}


def _nearest_valid(key: str, value) -> int | None:
    if key not in _RANGES or not isinstance(value, int) or isinstance(value, bool):
        return None
    low, high = _RANGES[key]
    if value < low:
        return low
    if high is not None and value > high:
        return high
    return None


def _jsonable(v):
    return v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)


def _from_start_error(exc, plan) -> Diagnosis:
    lines = _read_log(exc.log_path) or list(exc.log_tail)
    model_path = getattr(getattr(plan, "model", None), "path", None)
    status = exc.status
    d = None
    if not exc.timed_out:
        if status is not None and status.signal:
            d = _diagnose_log(lines, plan, "start", status, exc.log_path, model_path)
            if d is None or d.kind in (Kind.STARTUP_FAILED,):
                d = _crashed(plan, status, lines, "while starting")
        else:
            d = _diagnose_log(lines, plan, "start", status, exc.log_path, model_path)
    if d is None:
        d = _startup_failed(plan, status, None, exc.timed_out, exc.reason if exc.timed_out else None)
    d.log_path = str(exc.log_path)
    d.log_tail = _tail(lines)
    if status is not None:
        d.facts.setdefault("exit_code", status.code)
        d.facts.setdefault("signal", status.signal)
    return d


def _from_http(exc, proc, plan, offset) -> Diagnosis:
    f = exc.fields
    message = exc.error_message
    lines = _proc_lines(proc, offset, settle=0.0)
    d: Diagnosis | None = None
    if exc.type == "exceed_context_size_error" or ("n_prompt_tokens" in f and "n_ctx" in f):
        d = _context_exceeded(plan, _int(f.get("n_prompt_tokens")), _int(f.get("n_ctx")), message)
    elif exc.status in (401, 403):
        d = _auth(message, exc.status)
    else:
        m = best_match([message], getattr(plan, "engine", None))
        if m is None and proc is not None:
            lines = _proc_lines(proc, offset)
        if m is not None and m.kind in ("context_exceeded", "kv_cache_full", "image_failed"):
            facts = m.facts
            if m.kind == "context_exceeded":
                d = _context_exceeded(plan, _int(facts.get("n_prompt_tokens")), _int(facts.get("n_ctx_slot")),
                                      message)
            elif m.kind == "kv_cache_full":
                cause = facts.get("cause")
                lines = lines or _proc_lines(proc, offset, settle=0.0)
                if any(x.kind == "oom_load" for x in classify_lines(lines, getattr(plan, "engine", None))):
                    cause = "memory"
                d = _kv_cache_full(plan, cause, message)
            else:
                d = _image_failed(plan, message)
        elif m is not None and m.kind == "auth_failed":
            d = _auth(message, exc.status)
        else:
            d = _diagnose_log(lines, plan, "run") if lines else None
            if d is None:
                d = Diagnosis(Kind.SERVER_ERROR, f"The engine answered with an error (HTTP {exc.status})",
                              f"The engine said: {message}", {"status": exc.status, "type": exc.type,
                                                              "message": message},
                              [Fix("Try again", {}, "", action="retry")])
    d.facts.setdefault("status", exc.status)
    if exc.type:
        d.facts.setdefault("type", exc.type)
    d.facts["mid_stream"] = bool(exc.mid_stream)
    if proc is not None:
        d.log_path = str(proc.log_path)
        d.log_tail = _tail(lines or proc.log_lines(offset))
    return d


def _wait_exit(proc, seconds: float = 0.5):
    """A killed engine is reaped within milliseconds of the dropped connection; a live one costs at most this."""
    deadline = time.monotonic() + seconds
    while True:
        status = proc.exit_status()
        if status is not None or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def _from_broken(exc, proc, plan, offset) -> Diagnosis:
    status = _wait_exit(proc) if proc is not None else None
    if status is not None:
        lines = proc.log_lines(offset) if offset else _read_log(proc.log_path)
        d = _crashed(plan, status, lines, "while answering")
        d.log_path, d.log_tail = str(proc.log_path), _tail(lines)
        d.facts.setdefault("exit_code", status.code)
        d.facts.setdefault("signal", status.signal)
        if exc.received_text:
            d.facts["received_chars"] = len(exc.received_text)
        return d
    if exc.connect:
        return Diagnosis(Kind.UNREACHABLE, "Cannot reach the server",
                         f"Ember could not connect: {exc.reason}\nCheck that the server is running and that the "
                         "address is right.", {"reason": exc.reason},
                         [Fix("Try again", {}, "", action="retry"),
                          Fix("Edit the endpoint", {}, "", action="edit_endpoint")])
    d = Diagnosis(Kind.CONNECTION_LOST, "The connection to the engine broke",
                  f"The answer stopped before it was complete: {exc.reason}",
                  {"reason": exc.reason, "received_chars": len(exc.received_text)},
                  [Fix("Try again", {}, "", action="retry")])
    if proc is not None:
        d.log_path, d.log_tail = str(proc.log_path), _tail(proc.log_lines(offset))
    return d


def _from_plan_error(exc) -> Diagnosis:
    from engines.running.backends import LABELS
    reasons = {LABELS.get(e, e): r for e, r in (exc.reasons or {}).items()}
    if exc.engine and exc.install_command:
        label = LABELS.get(exc.engine, exc.engine)
        return Diagnosis(Kind.ENGINE_MISSING, f"The {label} engine is not installed",
                         f"{exc.model} needs the {label} engine, which is not installed here.",
                         {"model": exc.model, "engine": exc.engine, "install_command": exc.install_command,
                          "reasons": reasons},
                         [Fix(f"Install {label}", {}, exc.install_command, action="install")])
    why = "\n".join(f"- {e}: {r}" for e, r in reasons.items())
    from engines.running.backends import ENGINES
    able = [e for e in ENGINES if e not in (exc.reasons or {})]
    if able:  # the engine asked for cannot, another can
        return Diagnosis(Kind.NOT_SUPPORTED, f"The chosen engine cannot run {exc.model}",
                         f"Why:\n{why}\n{LABELS.get(able[0], able[0])} can run it.",
                         {"model": exc.model, "reasons": reasons, "engines_able": able},
                         [Fix(f"Use {LABELS.get(e, e)} instead", {}, "", action=f"use_engine:{e}") for e in able])
    return Diagnosis(Kind.NOT_SUPPORTED, f"No engine can run {exc.model} on this computer",
                     f"Why each engine cannot run it:\n{why}" if why else exc.message,
                     {"model": exc.model, "reasons": reasons},
                     [Fix("Choose another model", {}, "The models window shows what fits this computer.",
                          action="choose_model")])


def diagnose_finish(finished, plan) -> Diagnosis | None:
    """A reply cut short because the slot's context ran out (finish_reason "length" before max_tokens)."""
    return _for_engine(_diagnose_finish(finished, plan), plan)


def _diagnose_finish(finished, plan) -> Diagnosis | None:
    if finished is None or getattr(finished, "finish_reason", None) != "length" or finished.cancelled:
        return None
    usage = finished.usage
    out = usage.completion_tokens
    max_tokens = finished.max_tokens
    if max_tokens and out is not None and out >= max_tokens * 0.9:
        return None  # it stopped where the user asked it to
    if max_tokens and out is None:
        return None
    n_ctx = _n_ctx(plan)
    slots = _slots(plan)
    slot_ctx = _slot_ctx(plan)
    prompt = usage.prompt_tokens
    facts = {k: v for k, v in {"prompt_tokens": prompt, "completion_tokens": out, "max_tokens": max_tokens,
                               "n_ctx_slot": slot_ctx, "n_ctx": n_ctx, "n_parallel": slots}.items() if v is not None}
    text = "The answer stopped early because the context ran out"
    if slot_ctx and prompt is not None and out is not None:
        text += (f": the message took {_n(prompt)} tokens and the answer {_n(out)}, filling the slot's "
                 f"{_n(slot_ctx)} tokens {_ctx_words(plan, slot_ctx)}.")
    else:
        text += "."
    fixes: list[Fix] = []
    trained = _trained(plan)
    want = (prompt or 0) + max(max_tokens or 0, REPLY_ROOM, 2 * (out or 0))
    per_slot = _round_up(want)
    if trained:
        per_slot = min(per_slot, trained)
    if plan is not None and slot_ctx and per_slot > slot_ctx:
        if n_ctx and slots > 1 and not _unified(plan) and n_ctx // want >= 1:
            fewer = max(1, n_ctx // want)
            if fewer < slots:
                fixes.append(Fix(f"Use fewer parallel slots ({fewer})", {"n_parallel": fewer},
                                 f"Each slot then holds {_n(n_ctx // fewer)} tokens."))
        new_ctx = _ctx_for_slot(plan, per_slot)
        ok, need = _fits(plan, new_ctx)
        note = f"Each slot then holds {_n(per_slot)} tokens." + _kv_note(plan, new_ctx)
        fix = Fix(f"Raise the context to {_n(new_ctx)} tokens", {"n_ctx": new_ctx}, note)
        fixes.insert(0 if ok else len(fixes), fix)
    fixes.append(Fix("Start a new conversation", {}, "", action="new_conversation"))
    return Diagnosis(Kind.REPLY_CUT_SHORT, "The reply was cut short", text, facts, fixes)


def preflight(plan) -> Diagnosis | None:
    """Before launch: a plan whose memory estimate exceeds this computer's memory (cheap, no engine)."""
    est = getattr(plan, "fit", None)
    hw = getattr(plan, "hardware", None)
    if est is None or hw is None or not est.total_bytes:
        return None
    total = (hw.ram_total_bytes or 0) + sum((g.memory_total_bytes or 0) for g in hw.gpus
                                            if getattr(g, "usable_by_llamacpp", False))
    if not total or est.total_bytes <= total:
        return None
    d = _oom_load(plan, {"memory": "ram"}, predicted=True)
    d.explanation = (f"These settings need about {_gib(est.total_bytes)} (KV cache {_gib(est.kv_cache_bytes)}), "
                     f"more than this computer has ({_gib(total)}).\n" + d.explanation.split("\n", 1)[-1])
    return d


#: the name ARCHITECTURE.md uses for the entry point
diagnose = diagnose_exception
