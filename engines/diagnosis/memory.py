"""Diagnoses of memory that ran out: loading the model, encoding an image, and the warning before launch.

The words carry the numbers (what failed to allocate, the engine's estimate,
what was free); the parameter fixes are the engine's (:meth:`Engine.fixes_for`).
"""
from __future__ import annotations

from engines import units
from engines.diagnosis.case import Case
from engines.diagnosis.types import Diagnosis, Fix, Kind, count
from engines.running.backends.base import PlanView, free_memory


def _alloc_bytes(facts: dict) -> float | None:
    """The failed allocation, from the log line's number."""
    if facts.get("alloc_mib"):
        return float(facts["alloc_mib"]) * units.MIB
    if facts.get("alloc_mb"):
        return float(facts["alloc_mb"]) * units.MIB  # llama.cpp's "MB" are MiB
    if facts.get("alloc_gib"):
        return float(facts["alloc_gib"]) * units.GIB
    if facts.get("alloc_bytes"):
        return float(facts["alloc_bytes"])
    return None


def _memory_words(case: Case, facts: dict, on_gpu: bool) -> list[str]:
    """The numbers after the first sentence: the estimate, what was free, a context past training."""
    parts = []
    n_ctx, plan = case.shape.total, case.plan
    est = case.engine.memory_estimate(plan, n_ctx) if n_ctx and case.engine is not None else None
    if est is not None:
        facts.update({"kv_cache_bytes": est.kv_cache_bytes, "weights_bytes": est.weights_bytes,
                      "estimated_bytes": est.total_bytes})
        parts.append(f"Estimate for {case.context_key} {count(n_ctx)}: weights {units.size(est.weights_bytes)}, "
                     f"KV cache {units.size(est.kv_cache_bytes)}.")
    vram = sum((g.memory_free_bytes or 0) for g in plan.hardware.llamacpp_gpus()) if plan is not None else 0
    budget = free_memory(getattr(plan, "hardware", None))
    if on_gpu and vram:
        facts["gpu_memory_free_bytes"] = vram
        parts.append(f"GPU memory free before loading: {units.size(vram)}.")
    elif budget:
        facts["memory_free_bytes"] = budget
        parts.append(f"Free memory (RAM{' and GPU' if case.gpu_in_play else ''}): {units.size(budget)}.")
    if case.trained and n_ctx and n_ctx > case.trained:
        parts.append(f"{case.context_key} {count(n_ctx)} is also larger than the model's trained context "
                     f"({count(case.trained)}).")
        facts["n_ctx_train"] = case.trained
    return parts


def oom_load(case: Case, facts_in: dict, predicted: bool = False) -> Diagnosis:
    facts: dict[str, object] = {k: v for k, v in facts_in.items() if k != "kv"}  # engines' fixes read them all
    alloc = _alloc_bytes(facts_in)
    on_gpu = facts_in.get("memory") == "gpu"
    where = "the GPU's memory" if on_gpu else "memory"
    kv = facts_in.get("kv") or "kv cache" in str(facts_in.get("log_line", "")).lower()
    parts = [f"The model could not be loaded: {where} ran out while allocating "
             + ("the KV cache." if kv else "its buffers.")]
    if alloc:
        parts.append(f"It tried to allocate {units.size(alloc)}.")
        facts["alloc_bytes"] = int(alloc)
    if case.shape.total:
        facts["n_ctx"] = case.shape.total
        facts["n_parallel"] = case.shape.slots
    parts += _memory_words(case, facts, on_gpu)
    fixes = case.fixes(Kind.OOM_LOAD, facts)
    fixes.append(Fix("Use a smaller quantization of the model", {}, smaller_quant_note(case.plan),
                     action="choose_model"))
    title = ("This model will not fit in memory with these settings" if predicted
             else "Not enough memory to load the model")
    return Diagnosis(Kind.OOM_LOAD, title, " ".join(parts[:1]) + ("\n" + " ".join(parts[1:]) if parts[1:] else ""),
                     facts, fixes)


def smaller_quant_note(plan: PlanView | None) -> str:
    model = getattr(plan, "model", None)
    if model is not None and getattr(model, "format", "gguf") != "gguf":
        return "A quantized version of the model (AWQ, GPTQ) or a smaller model needs less memory."
    quant = str(getattr(model, "quantization", "") or "").upper()
    if quant.startswith(("F32", "F16", "BF16", "Q8", "Q6", "Q5")):
        return f"This file is {quant}; the same model in Q4_K_M needs about half the memory or less for its weights."
    if quant.startswith("Q4") or quant.startswith("IQ4"):
        return f"This file is {quant}; Q3_K_M or a smaller model needs less memory, at some cost in quality."
    return "For example Q4_K_M instead of Q8_0: the weights take about half the memory."


def image_failed(case: Case, message: str | None, cause: str | None = None) -> Diagnosis:
    """``cause`` "decode": the picture's data could not be read (not memory)."""
    n_ctx = case.shape.total
    facts = {k: v for k, v in {"n_ctx": n_ctx, "message": message, "cause": cause}.items() if v is not None}
    if cause == "decode":
        return Diagnosis(Kind.IMAGE_FAILED, "The engine could not read the image",
                         "The engine could not decode the image's data: the picture is damaged, in a format it "
                         "does not read, or was sent in a form it does not take (a link instead of the data).",
                         facts, [Fix("Send the image again as PNG or JPEG", {}, "Attach the file itself.",
                                     action="edit_message")])
    text = "The engine could not encode the image: most likely the GPU ran out of memory while processing it."
    if n_ctx and n_ctx > 1024:
        text += f"\nThe context ({count(n_ctx)} tokens) holds memory the image encoder then lacks."
    fixes = case.fixes(Kind.IMAGE_FAILED, facts)
    fixes.append(Fix("Send a smaller image", {}, "A smaller picture needs less memory to encode.",
                     action="edit_message"))
    return Diagnosis(Kind.IMAGE_FAILED, "The engine could not process the image", text, facts, fixes)


def preflight(plan: PlanView | None) -> Diagnosis | None:
    """Before launch: a plan whose memory estimate exceeds this computer's memory (cheap, no engine)."""
    est = getattr(plan, "fit", None)
    hw = getattr(plan, "hardware", None)
    if est is None or hw is None or not est.total_bytes:
        return None
    total = (hw.ram_total_bytes or 0) + sum((g.memory_total_bytes or 0) for g in hw.llamacpp_gpus())
    if not total or est.total_bytes <= total:
        return None
    d = oom_load(Case.of(plan), {"memory": "ram"}, predicted=True)
    d.explanation = (f"These settings need about {units.size(est.total_bytes)} (KV cache "
                     f"{units.size(est.kv_cache_bytes)}), more than this computer has ({units.size(total)}).\n"
                     + d.explanation.split("\n", 1)[-1])
    return d
