"""Diagnoses of a conversation that does not fit: a prompt longer than the context, a full KV
cache, a reply cut short. The words and numbers are here; the parameter fixes are the engine's."""
from __future__ import annotations

from engines.diagnosis.case import Case
from engines.diagnosis.types import Diagnosis, Fix, Kind, count


def context_exceeded(case: Case, n_prompt: int | None, slot_ctx: int | None, message: str | None = None,
                     multimodal: bool = False, reply_tokens: int | None = None, limit: str | None = None,
                     history: bool = False) -> Diagnosis:
    """``reply_tokens``: the answer's share of the request, when the engine counts it (vLLM);
    ``limit`` "pool": the limit is the KV cache's size, not the context (SGLang); ``history``: the
    prompt counted earlier turns too, so it is the conversation that needs the tokens, not the message."""
    s = case.shape
    if slot_ctx is None and s.total:
        slot_ctx = s.per_slot
    facts: dict[str, object] = {"n_prompt_tokens": n_prompt, "n_ctx_slot": slot_ctx, "n_ctx": s.total,
                                "n_parallel": s.slots, "n_ctx_train": case.trained, "max_tokens": reply_tokens,
                                "limit": limit, "history": history or None}
    facts = {k: v for k, v in facts.items() if v is not None}
    holds = "each slot holds" if s.split else "the context holds"
    needs = "This conversation needs" if history else "Your message needs"
    if n_prompt and slot_ctx and reply_tokens and n_prompt < slot_ctx:
        first = (f"{needs} {count(n_prompt)} tokens and asks for up to {count(reply_tokens)} more for "
                 f"the answer; {holds} {count(slot_ctx)}")
    elif n_prompt and slot_ctx:
        first = f"{needs} {count(n_prompt)} tokens; {holds} {count(slot_ctx)}"
    elif slot_ctx:
        first = f"The conversation no longer fits in the context; {holds} {count(slot_ctx)} tokens"
    else:
        first = "The conversation no longer fits in the engine's context"
    first += f" {case.words(slot_ctx)}." if s.total and case.plan is not None else "."
    refuses = ("The engine refuses a request longer than one slot's context" if s.split
               else "The engine refuses a request longer than its context")
    lines = [first, refuses + "; it does not drop old turns by itself."]
    if limit == "pool":
        lines.append("Here the limit is the size of the engine's KV cache, smaller than the context it was set to.")
    if multimodal or getattr(getattr(case.plan, "model", None), "has_vision", False):
        lines.append("With images in the conversation (multimodal), context shift is off, so the context must hold "
                     "the whole conversation.")
    if case.plan is not None and case.trained and n_prompt and n_prompt >= case.trained:
        lines.append(f"That is more than the model can read at once ({count(case.trained)} tokens, its trained "
                     "context).")
    fixes = case.fixes(Kind.CONTEXT_EXCEEDED, facts)
    suggested = case.changed_context(fixes)
    if suggested is not None:
        facts["suggested_n_ctx"] = suggested
    fixes.append(Fix("Start a new conversation", {}, "Or shorten the message, or delete earlier turns.",
                     action="new_conversation"))
    if message:
        facts["message"] = message
    return Diagnosis(Kind.CONTEXT_EXCEEDED, "The conversation is longer than the engine's context",
                     "\n".join(lines), facts, fixes)


def kv_cache_full(case: Case, cause: str | None, message: str | None) -> Diagnosis:
    s = case.shape
    n_ctx, slots = s.total, s.slots
    facts: dict[str, object] = {k: v for k, v in {"n_ctx": n_ctx, "n_parallel": slots, "kv_unified": s.shared,
                                                  "cause": cause or "memory", "message": message}.items()
                                if v is not None}
    if cause == "space":
        text = (f"The engine's KV cache (the memory of the conversation, {count(n_ctx)} tokens"
                if n_ctx else "The engine's KV cache (the memory of the conversation")
        text += (f", shared by {slots} slots) filled up while answering several requests at once."
                 if s.shared and slots > 1 else ") filled up while answering.")
        text += "\nThe answer stopped because there was no room left for the next tokens."
    else:
        text = ("The engine ran out of memory for the KV cache (the memory of the conversation) while "
                "answering, so it could not decode the next batch.")
        if n_ctx:
            text += f"\nThe context is {count(n_ctx)} tokens over {slots} slot{'s' if slots > 1 else ''}."
    fixes = case.fixes(Kind.KV_CACHE_FULL, facts)
    fixes.append(Fix("Start a new conversation", {}, "A shorter conversation needs less of the cache.",
                     action="new_conversation"))
    return Diagnosis(Kind.KV_CACHE_FULL, "The engine's KV cache is full", text, facts, fixes)


def reply_cut_short(finished, case: Case) -> Diagnosis | None:
    """A reply cut short because the slot's context ran out (finish_reason "length" before max_tokens)."""
    if finished is None or getattr(finished, "finish_reason", None) != "length" or finished.cancelled:
        return None
    usage = finished.usage
    out = usage.completion_tokens
    max_tokens = finished.max_tokens
    if max_tokens and out is not None and out >= max_tokens * 0.9:
        return None  # it stopped where the user asked it to
    if max_tokens and out is None:
        return None
    s = case.shape
    slot_ctx, prompt = s.per_slot, usage.prompt_tokens
    facts = {k: v for k, v in {"prompt_tokens": prompt, "completion_tokens": out, "max_tokens": max_tokens,
                               "n_ctx_slot": slot_ctx, "n_ctx": s.total, "n_parallel": s.slots}.items()
             if v is not None}
    text = "The answer stopped early because the context ran out"
    if slot_ctx and prompt is not None and out is not None:
        text += (f": the message took {count(prompt)} tokens and the answer {count(out)}, filling the slot's "
                 f"{count(slot_ctx)} tokens {case.words(slot_ctx)}.")
    else:
        text += "."
    fixes = case.fixes(Kind.REPLY_CUT_SHORT, facts)
    fixes.append(Fix("Start a new conversation", {}, "", action="new_conversation"))
    return Diagnosis(Kind.REPLY_CUT_SHORT, "The reply was cut short", text, facts, fixes)
