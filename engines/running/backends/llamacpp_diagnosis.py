"""llama.cpp's diagnosis dialect: its log lines, how it holds its context, and its fix arithmetic.

The engine-neutral diagnosis (:mod:`engines.diagnosis`) says what went wrong;
this module answers, in llama.cpp's own keys (``n_ctx``, ``n_parallel``,
``n_gpu_layers``, ``cache_type_k``...), what to change: a context that fits the
prompt, fewer slots, fewer layers on the GPU, a quantized KV cache. Sizes come
from the same memory estimate auto-NGL uses (:mod:`engines.machine.fit`).

Sources of the log lines: the seed's "Common Issues" (older llama.cpp, Metal),
the lines provoked on this machine (FACTS.md, xllamacpp 2026.10, CPU), the
CUDA allocator's wording, and logs users posted in public issue threads
(``tests/fixtures/wild_logs/llamacpp``: llama-server, llama-cpp-python, llama-box).
"""
from __future__ import annotations

import functools
import logging
import math
import re
from typing import Callable, Mapping

from engines import units
from engines.diagnosis.types import Fix, Kind, count, log_table
from engines.machine import fit, gguf_info
from engines.running.backends import terms
from engines.running.backends.base import (ContextShape, PlanView, free_memory, offloads_to_gpu, plan_param,
                                           trained_context)

log = logging.getLogger(__name__)

#: tokens kept free for the answer when computing a context that fits a prompt
REPLY_ROOM = 512
#: share of free memory a computed n_ctx may plan to use
MEMORY_SHARE = 0.8
#: llama.cpp (xllamacpp 2026.10) gives each slot at least 256 tokens: n_ctx 256 with n_parallel 2 becomes
#: 512 in all ("n_ctx is not divisible by n_seq_max - rounding ..."), 256 per slot.
MIN_SLOT_CTX = 256

#: llama.cpp's lines (and anything that prints them), most specific first.
LOG_PATTERNS = log_table(
    # -- the GPU is there but this build or driver cannot use it ---------------------------
    (r"CUDA driver version is insufficient for CUDA runtime version", "gpu_unusable", {"problem": "driver_too_old"}),
    (r"no CUDA-capable device is detected|no CUDA devices found", "gpu_unusable", {"problem": "no_device"}),
    (r"ggml_cuda_init: failed to initialize CUDA: (?P<detail>.*)", "gpu_unusable", {"problem": "init_failed"}),
    (r"not compiled with GPU offload support", "gpu_unusable", {"problem": "cpu_build"}),
    (r"no usable GPU found, --gpu-layers option will be ignored", "gpu_unusable", {"problem": "no_device"}),
    # -- port / start-up ------------------------------------------------------------------
    (r"couldn't bind HTTP server socket.*?port: (?P<port>\d+)", "port_in_use"),
    (r"couldn't bind HTTP server socket", "port_in_use"),
    (r"address already in use", "port_in_use"),
    # -- a server feature Ember starts switched off (the answer names llama-server's flag) -----
    (r"does not support embeddings|Pooling type 'none' is not OAI compatible", "not_supported",
     {"feature": "embeddings"}),
    (r"does not support reranking", "not_supported", {"feature": "reranking"}),
    (r"does not support metrics", "not_supported", {"feature": "metrics"}),
    (r"does not support slots", "not_supported", {"feature": "slots"}),
    (r"does not support changing global properties", "not_supported", {"feature": "props"}),
    # -- not a valid model file -----------------------------------------------------------
    (r"failed to open GGUF file '(?P<file>[^']*)'(?: \((?P<os_error>[^)]*)\))?", "invalid_model", {"problem": "missing"}),
    (r"gguf_init_from_reader: failed to read magic", "invalid_model", {"problem": "empty"}),
    (r"invalid magic characters:? '(?P<magic>[^']*)'", "invalid_model", {"problem": "not_gguf"}),
    (r"invalid magic number (?P<magic>\w+)", "invalid_model", {"problem": "not_gguf"}),
    (r"unknown \(magic, version\) combination: (?P<magic>\w+), (?P<version>\w+)", "invalid_model",
     {"problem": "unsupported"}),
    (r"create_tensor: tensor '(?P<tensor>[^']+)' not found|tensor '(?P<missing>[^']+)' not found", "invalid_model",
     {"problem": "wrong_tensors"}),
    (r"failed to read key-value pairs", "invalid_model", {"problem": "truncated"}),
    (r"failed to read tensor info", "invalid_model", {"problem": "truncated"}),
    (r"data is not within the file bounds", "invalid_model", {"problem": "truncated"}),
    (r"model is corrupted or incomplete", "invalid_model", {"problem": "truncated"}),
    (r"unknown model architecture: '(?P<architecture>[^']*)'", "invalid_model", {"problem": "unknown_architecture"}),
    (r"unsupported model architecture", "invalid_model", {"problem": "unknown_architecture"}),
    (r"GGUF version \d+ is not supported|unsupported GGUF version", "invalid_model", {"problem": "unsupported"}),
    (r"error loading model vocabulary", "invalid_model", {"problem": "corrupt"}),
    (r"wrong number of tensors", "invalid_model", {"problem": "corrupt"}),
    # -- an image the server cannot read ---------------------------------------------------
    (r"failed to decode image bytes|failed to load image", "image_failed", {"cause": "decode"}),
    # -- image encoding ran out of memory (seed error 1) ----------------------------------
    (r"failed to process image", "image_failed"),
    (r"failed to encode image", "image_failed"),
    (r"clip_image_batch_encode: .*failed", "image_failed"),
    (r"mtmd_helper_eval failed", "image_failed"),
    # -- the request is longer than a slot (seed error 2) ---------------------------------
    (r"request \((?P<n_prompt_tokens>\d+) tokens\) exceeds the available context size \((?P<n_ctx_slot>\d+) tokens\)",
     "context_exceeded"),
    (r"the request exceeds the available context size", "context_exceeded"),
    (r"exceed_context_size_error", "context_exceeded"),
    (r"Requested tokens \((?P<n_prompt_tokens>\d+)\) exceed context window of (?P<n_ctx_slot>\d+)",
     "context_exceeded"),  # llama-cpp-python
    # no failure alone (every prompt logs it): the numbers for a context error named on a later line
    (r"n_ctx_slot = (?P<n_ctx_slot>\d+), n_keep = \d+, n_prompt_tokens = (?P<n_prompt_tokens>\d+)", "context_exceeded",
     {"supporting": True}),
    # -- the KV cache is full or memory ran out while decoding (seed error 3) -------------
    (r"Input prompt is too big compared to KV size", "kv_cache_full"),
    (r"KV cache is full", "kv_cache_full"),
    (r"failed to find free space in the KV cache", "kv_cache_full", {"cause": "space"}),
    (r"failed to find a memory slot for batch", "kv_cache_full", {"cause": "space"}),
    (r"Context size has been exceeded", "kv_cache_full", {"cause": "space"}),
    (r"failed to decode the batch", "kv_cache_full"),
    (r"llama_decode: failed to decode", "kv_cache_full"),
    (r"decode\(\) failed", "kv_cache_full"),
    # -- out of memory while loading (weights or KV buffers) -------------------------------
    (r"insufficient memory \(attempted to allocate (?P<alloc_mb>[\d.]+) MB\)", "oom_load", {"memory": "ram"}),
    (r"allocating (?P<alloc_mib>[\d.]+) MiB on device (?P<device>\d+): cudaMalloc failed: out of memory",
     "oom_load", {"memory": "gpu"}),
    (r"cudaMalloc failed: out of memory", "oom_load", {"memory": "gpu"}),
    (r"failed to allocate (?P<buffer>(?:CUDA|ROCm|Vulkan|Metal|MTL|SYCL)\d*) buffer", "oom_load", {"memory": "gpu"}),
    (r"CUDA error: out of memory", "oom_load", {"memory": "gpu"}),
    (r"kIOGPUCommandBufferCallbackErrorOutOfMemory|error: Insufficient Memory \(", "oom_load", {"memory": "gpu"}),
    (r"ErrorOutOfDeviceMemory|vk::Device::allocateMemory", "oom_load", {"memory": "gpu"}),
    (r"failed to allocate buffer for kv cache", "oom_load"),
    (r"failed to allocate (?P<buffer>CPU\w*) buffer", "oom_load", {"memory": "ram"}),
    (r"unable to allocate .*backend buffer", "oom_load"),
    (r"failed to allocate compute (?:pp )?buffers?", "oom_load"),
    (r"std::bad_alloc", "oom_load", {"memory": "ram"}),
    (r"(?<!running )(?<!run )\bout of memory\b", "oom_load"),
    # -- crashes ---------------------------------------------------------------------------
    (r"GGML_ASSERT\((?P<assertion>.*)\) failed", "engine_crashed"),
    (r"GGML_ASSERT: (?P<where>\S+): (?P<assertion>.*)", "engine_crashed"),
    (r"Assertion `(?P<assertion>[^`']+)' failed", "engine_crashed"),  # C's assert (torch's ends in a backquote)
    (r"Segmentation fault|segfault", "engine_crashed"),
    # -- generic start-up failure (last: it accompanies every cause above) -----------------
    (r"n_seq_max must be <= (?P<max_parallel>\d+)", "bad_parameter", {"parameter": "n_parallel"}),
    (r"llama_model_load: error loading model: (?P<detail>.*)", "invalid_model", {"problem": "load_error"}),
    (r"failed to load model", "startup_failed"),
    (r"failed to (?:create|initialize the) context|Failed to create llama_context", "startup_failed"),
    (r"Failed to init server", "startup_failed"),
    (r"llama\.cpp failed to start", "startup_failed"),
)

#: Lines only llama.cpp (and programs built on it) writes: whose log a pasted one is.
SIGNATURE = re.compile(
    r"llama_model_load|llama_new_context|llama_context|llm_load_|load_tensors|print_info|llama_model_loader|"
    r"\bggml_|\bgguf_|GGML_ASSERT|llama_kv_cache|update_slots|launch_slot|n_ctx_slot|llama-server|llama_cpp|"
    r"llama\.cpp|clip_model_load|clip_image|\bmtmd|server is listening on|llama server listening|ember-worker|"
    r"Start it with `--\w+`|exceed_context_size_error|exceeds the available context size")
#: What it writes while loading a model, and once it serves.
LOADING = re.compile(
    r"llama_model_load|load_tensors|llm_load_|llama_new_context|llama_context:|llama_model_loader|print_info:|"
    r"load_model|warming up|llama_kv_cache|ember-worker: starting")
SERVING = re.compile(
    r"update_slots|launch_slot|slot \d+ is processing|kv cache rm|print_timings|all slots are idle|"
    r"server is listening|HTTP server listening|starting the main loop|log_server_r|params_from_|send_error|"
    r"ember-worker: ready")

#: How to install llama.cpp's CUDA build (xllamacpp's own package index).
CUDA_INSTALL = "pip install --force-reinstall xllamacpp --index-url https://xorbitsai.github.io/xllamacpp/whl/cu128"



# -- the context as llama.cpp really sets it ------------------------------------------------------

def context_shape(plan: PlanView | None) -> ContextShape:
    """n_ctx split over n_parallel slots (at least MIN_SLOT_CTX each), or shared by all with kv_unified."""
    total = plan_param(plan, "n_ctx") or trained_context(plan)
    total = int(total) if total else None
    slots = max(1, int(plan_param(plan, "n_parallel", 1) or 1))
    shared = bool(plan_param(plan, "kv_unified", False))
    per_slot = None if not total else total if shared else max(MIN_SLOT_CTX, total // slots)
    return ContextShape(total, slots, per_slot, split=True, shared=shared)


def _ctx_for_slot(shape: ContextShape, per_slot: int) -> int:
    """The n_ctx that gives each slot ``per_slot`` tokens."""
    return per_slot if shape.shared else per_slot * shape.slots


def _round_up(n: int, step: int = 1024) -> int:
    return max(step, int(math.ceil(n / step)) * step)


def _pow2_floor(n: int) -> int:
    return 1 << max(0, int(n).bit_length() - 1)


# -- memory: the auto-NGL estimate at other settings -------------------------------------------------

@functools.lru_cache(maxsize=8)
def _gguf(path: str) -> gguf_info.GGUFInfo:
    return gguf_info.read(path, check_data=False)


def memory_estimate(plan: PlanView | None, n_ctx: int, n_parallel: int | None = None,
                    cache_type: str | None = None) -> fit.FitEstimate | None:
    """fit.estimate for the plan's model with other settings; None when it cannot be computed."""
    if plan is None or not getattr(plan.model, "path", None) or plan.model.format != "gguf":
        return None
    try:
        return fit.estimate(_gguf(plan.model.path), plan.hardware, n_ctx, n_parallel or context_shape(plan).slots,
                            cache_type or str(plan_param(plan, "cache_type_k", "f16")))
    except Exception as exc:  # an estimate only sharpens the fixes: never let it hide them
        log.info("memory estimate failed: %s", exc)
        return None


def _fits(plan: PlanView, n_ctx: int) -> bool:
    est = memory_estimate(plan, n_ctx)
    budget = free_memory(getattr(plan, "hardware", None))
    if est is None or not budget or not est.total_bytes:
        return True
    return est.total_bytes <= budget * MEMORY_SHARE


def _kv_note(plan: PlanView, new_ctx: int) -> str:
    """' KV cache 78 MiB instead of 39 MiB.': the memory a context change costs or saves (estimate)."""
    now, new = memory_estimate(plan, context_shape(plan).total or 0), memory_estimate(plan, new_ctx)
    if new is None or not new.kv_cache_bytes:
        return ""
    if now is None or not now.kv_cache_bytes:
        return f" KV cache about {units.size(new.kv_cache_bytes)}."
    return f" KV cache about {units.size(new.kv_cache_bytes)} instead of {units.size(now.kv_cache_bytes)}."


def _smaller_ctx(plan: PlanView, start: int, floor: int = 1024) -> int:
    """The largest power-of-two n_ctx <= start that the memory estimate says fits."""
    c = _pow2_floor(max(floor, start))
    while c > floor and not _fits(plan, c):
        c //= 2
    return c


def _fewer_layers(plan: PlanView, alloc_bytes: float | None = None) -> Fix | None:
    """Offload fewer layers: enough to free the failed allocation, else a quarter fewer than now."""
    if not offloads_to_gpu(plan, "n_gpu_layers"):
        return None
    est = plan.fit
    total = (est.total_layers if est and est.total_layers else (plan.model.block_count or 0) + 1) or None
    current = int(plan_param(plan, "n_gpu_layers", -1))
    if current < 0 or (total and current > total):
        current = est.gpu_layers if est and est.gpu_layers else (total or 0)
    if current <= 0:
        return None
    drop = max(1, math.ceil(current * 0.25))
    if alloc_bytes and est and est.weights_bytes and total:
        per_layer = est.weights_bytes / total
        drop = max(drop, math.ceil(alloc_bytes / per_layer) + 1)
    new = max(0, current - drop)
    note = (f"{count(new)} of {count(total or current)} layers on the GPU instead of {count(current)}; "
            "the rest run on the CPU, slower.")
    return Fix(f"Put fewer layers on the GPU ({new})", {"n_gpu_layers": new}, note)


def _lower_ctx(n_ctx: int | None, note: str) -> list[Fix]:
    """Half the context (whole thousands, at least 1,024) when it is above 1,024."""
    if not n_ctx or n_ctx <= 1024:
        return []
    new = max(1024, (n_ctx // 2) // 1024 * 1024)
    return [Fix(f"Lower the context to {count(new)} tokens", {"n_ctx": new}, note)]


# -- fixes by kind ----------------------------------------------------------------------------------

def _context_exceeded(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    """A prompt longer than a slot: fewer slots (no extra memory), or a context that holds it."""
    shape, trained = context_shape(plan), trained_context(plan)
    n_prompt, slot_ctx = facts.get("n_prompt_tokens"), facts.get("n_ctx_slot")
    need = (n_prompt + REPLY_ROOM) if n_prompt else (2 * slot_ctx if slot_ctx else None)
    if not need:
        return []
    if trained and n_prompt and n_prompt >= trained:
        per_slot = None  # more than the model can read at once
    elif trained and need > trained:
        per_slot = trained  # all the model can take; little room left for the answer
    else:
        per_slot = min(_round_up(need), trained) if trained else _round_up(need)
    fixes: list[Fix] = []
    if shape.total and shape.slots > 1 and not shape.shared:
        fewer = shape.total // need
        if 1 <= fewer < shape.slots:
            fixes.append(Fix(f"Use fewer parallel slots ({fewer})", {"n_parallel": fewer},
                             f"Each slot then holds {count(shape.total // fewer)} tokens; "
                             f"{fewer} request{'s' if fewer > 1 else ''} can run at the same time."))
    if per_slot and (not slot_ctx or per_slot > slot_ctx):
        new_ctx = _ctx_for_slot(shape, per_slot)
        note = (f"Each slot then holds {count(per_slot)} tokens: room for this message and about "
                f"{count(max(0, per_slot - (n_prompt or 0)))} tokens of answer.") + _kv_note(plan, new_ctx)
        if not _fits(plan, new_ctx):
            note += " This may not fit in this computer's memory."
        fixes.append(Fix(f"Raise the context to {count(new_ctx)} tokens", {"n_ctx": new_ctx}, note))
    return fixes


def _kv_cache_full(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    shape, trained = context_shape(plan), trained_context(plan)
    n_ctx, slots = shape.total, shape.slots
    fixes: list[Fix] = []
    if facts.get("cause") == "space":  # the cache is full of other requests' tokens: more room, or one at a time
        if n_ctx:
            cap = trained * (1 if shape.shared else slots) if trained else None
            new = _round_up(n_ctx * 2)
            if cap:
                new = min(new, max(cap, n_ctx))
            if new > n_ctx:
                fixes.append(Fix(f"Raise the context to {count(new)} tokens", {"n_ctx": new},
                                 "More room for answers that run at the same time." + _kv_note(plan, new)))
        if slots > 1:
            fixes.append(Fix("Answer one request at a time", {"n_parallel": 1},
                             "Other requests wait their turn; each gets the whole context."))
        return fixes
    fixes += _lower_ctx(n_ctx, "A smaller KV cache needs less memory; long conversations then need a new start "
                               "sooner.")
    fewer = _fewer_layers(plan)
    if fewer:
        fixes.append(fewer)
    if n_ctx:
        more = min(256, slots * 2)
        fixes.append(Fix(f"Raise n_parallel to {more}", {"n_parallel": more},
                         f"Each request then gets {count(n_ctx // more)} tokens of context, so it needs less "
                         "memory at a time. This does not help if you send one request at a time "
                         "(serial use): it makes no answer faster."))
    return fixes


def _image_failed(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    if facts.get("cause") == "decode":
        return []  # the picture's data, not memory: no setting helps
    fixes = _lower_ctx(context_shape(plan).total, "Frees memory for the image encoder.")
    fewer = _fewer_layers(plan)
    return fixes + [fewer] if fewer else fixes


def _oom_load(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    """Out of memory at load: the smaller of context and GPU layers first (whichever is bigger), a q8_0 KV cache."""
    shape, trained = context_shape(plan), trained_context(plan)
    n_ctx = shape.total
    est = memory_estimate(plan, n_ctx, shape.slots) if n_ctx else None
    ctx_fix = None
    if n_ctx and n_ctx > 1024:
        start = n_ctx // 2
        if trained:
            start = min(start, trained * (1 if shape.shared else shape.slots))
        new = _smaller_ctx(plan, start)
        if new and new < n_ctx:
            ctx_fix = Fix(f"Lower the context to {count(new)} tokens", {"n_ctx": new},
                          "A smaller context needs a smaller KV cache." + _kv_note(plan, new))
    fewer = _fewer_layers(plan, facts.get("alloc_bytes"))
    kv_big = est is not None and est.kv_cache_bytes > est.weights_bytes
    order = (ctx_fix, fewer) if kv_big or facts.get("memory") != "gpu" else (fewer, ctx_fix)
    fixes = [f for f in order if f]
    if str(plan_param(plan, "cache_type_k", "f16")) in ("f16", "f32", "bf16"):
        fixes.append(Fix("Quantize the KV cache (q8_0)", {"cache_type_k": "q8_0", "cache_type_v": "q8_0"},
                         "Halves the KV cache's memory with little loss of quality."))
    return fixes


def _crashed(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    n_ctx = context_shape(plan).total
    if not facts.get("out_of_memory") or not n_ctx or n_ctx <= 2048:
        return []
    new = max(2048, (n_ctx // 2) // 1024 * 1024)
    return [Fix(f"Restart with a smaller context ({count(new)} tokens)", {"n_ctx": new},
                "Needs less memory, in case memory ran out.")]


def _reply_cut_short(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    """The slot filled up while answering: a context with room for the answer, or fewer slots."""
    shape, trained = context_shape(plan), trained_context(plan)
    prompt, out, max_tokens = facts.get("prompt_tokens"), facts.get("completion_tokens"), facts.get("max_tokens")
    want = (prompt or 0) + max(max_tokens or 0, REPLY_ROOM, 2 * (out or 0))
    per_slot = min(_round_up(want), trained) if trained else _round_up(want)
    if not shape.per_slot or per_slot <= shape.per_slot:
        return []
    fixes: list[Fix] = []
    n_ctx, slots = shape.total, shape.slots
    if n_ctx and slots > 1 and not shape.shared and n_ctx // want >= 1:
        fewer = max(1, n_ctx // want)
        if fewer < slots:
            fixes.append(Fix(f"Use fewer parallel slots ({fewer})", {"n_parallel": fewer},
                             f"Each slot then holds {count(n_ctx // fewer)} tokens."))
    new_ctx = _ctx_for_slot(shape, per_slot)
    note = f"Each slot then holds {count(per_slot)} tokens." + _kv_note(plan, new_ctx)
    raise_ctx = Fix(f"Raise the context to {count(new_ctx)} tokens", {"n_ctx": new_ctx}, note)
    fixes.insert(0 if _fits(plan, new_ctx) else len(fixes), raise_ctx)
    return fixes


def _bad_parameter(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    return [Fix("Use n_parallel 1", {"n_parallel": 1}, "")] if facts.get("parameter") == "n_parallel" else []


def _gpu_unusable(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    """Run every layer on the CPU: slower, but it starts."""
    if plan is not None and int(plan_param(plan, "n_gpu_layers", -1)) == 0:
        return []
    return [Fix("Run on the CPU", {"n_gpu_layers": 0}, "Every layer on the CPU: slower, but no GPU needed.")]


def _not_supported(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    """A server feature Ember starts switched off: switch it on."""
    changes = terms.FEATURES.get(str(facts.get("feature")))
    if not changes:
        return []
    return [Fix(f"Turn {facts['feature']} on", dict(changes), "Relaunch the model with the feature on.")]


_FIXES: dict[Kind, Callable[[Mapping[str, object], PlanView], list[Fix]]] = {
    Kind.CONTEXT_EXCEEDED: _context_exceeded, Kind.KV_CACHE_FULL: _kv_cache_full, Kind.IMAGE_FAILED: _image_failed,
    Kind.OOM_LOAD: _oom_load, Kind.ENGINE_CRASHED: _crashed, Kind.REPLY_CUT_SHORT: _reply_cut_short,
    Kind.BAD_PARAMETER: _bad_parameter, Kind.GPU_UNUSABLE: _gpu_unusable, Kind.NOT_SUPPORTED: _not_supported,
}


def fixes_for(kind: Kind, facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    """llama.cpp's parameter fixes for a diagnosis of ``kind``, best first (``plan`` None: from the log alone)."""
    fn = _FIXES.get(Kind(kind))
    return fn(facts, plan) if fn else []
