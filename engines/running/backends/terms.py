"""Engine messages that name a llama-server flag, said in Ember's terms: the one translation table.

llama.cpp's server (and Ember's Transformers server, which answers in its words)
tells users to "start it with `--embeddings`" or to "try increasing" the context,
but Ember takes no such flags: its engines are set with ``--set key=value`` or
the launch dialog. :func:`in_ember_terms` rewrites a message wherever Ember shows
one (a diagnosis' explanation and facts); the log itself stays as written.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: room for the answer when a message names how long a request was
REPLY_ROOM = 512


@dataclass(frozen=True)
class Term:
    """A phrase an engine writes, and what Ember says instead.

    ``ember`` may name ``{context}`` (the engine's context key) and ``{tokens}`` (a
    context that holds the request the message counted, or "N" when it names none).
    ``engines``: the engines whose messages say it; empty: any engine with a context key.
    """

    regex: re.Pattern
    ember: str
    engines: tuple[str, ...] = ()


def _term(regex: str, ember: str, *engines: str) -> Term:
    return Term(re.compile(regex, re.IGNORECASE), ember, tuple(engines))


#: A llama-server feature its answers tell users to start with a flag, and the keys Ember sets for it instead.
FEATURES: dict[str, dict[str, object]] = {
    "embeddings": {"embedding": True, "pooling_type": "mean"},
    "reranking": {"embedding": True, "pooling_type": "rank"},
    "metrics": {"endpoint_metrics": True},
    "slots": {"endpoint_slots": True},
    "props": {"endpoint_props": True},
}
#: llama-server's flag for each feature ("Start it with `--embeddings`").
FLAGS = {"embeddings": r"--embeddings?", "reranking": r"--rerank(?:ing)?", "metrics": r"--metrics",
         "slots": r"--slots", "props": r"--props"}


def set_flags(changes: dict[str, object]) -> str:
    """``--set embedding=true --set pooling_type=mean``: how the CLI takes ``changes``."""
    return " ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items())


TERMS: tuple[Term, ...] = tuple(
    _term(rf"Start it with `?{FLAGS[feature]}`?",
          f"Turn {feature} on: `{set_flags(changes)}` (or those keys in the launch dialog's Advanced table)",
          "llamacpp")
    for feature, changes in FEATURES.items()
) + (
    _term(r"Please use a different pooling type",
          f"Use `{set_flags({'pooling_type': FEATURES['embeddings']['pooling_type']})}`", "llamacpp"),
    _term(r"try increasing the context size or enable context shift",
          "raise the context (`--set {context}={tokens}` or the launch dialog's Context size field) or turn on "
          "context shift (`--set ctx_shift=true`)", "llamacpp"),
    _term(r"try increasing it via (?:the|total) context size(?: or enabling defragmentation)?",
          "raise the context (`--set {context}={tokens}` or the launch dialog's Context size field)"),
    _term(r"try increasing (?:it|the context size)",
          "raise the context (`--set {context}={tokens}` or the launch dialog's Context size field)"),
    _term(r"try reducing --n-gpu-layers", "try fewer GPU layers (`--set n_gpu_layers=N` or the launch dialog's GPU "
          "layers field)", "llamacpp"),
)

_REQUEST = re.compile(r"request \((\d+) tokens\)|n_prompt_tokens\W+(\d+)", re.IGNORECASE)


def tokens_for(message: str) -> str:
    """A context that holds the request a message counted (whole thousands, room for an answer), else "N"."""
    m = _REQUEST.search(message)
    if not m:
        return "N"
    need = int(m.group(1) or m.group(2)) + REPLY_ROOM
    return str(int(math.ceil(need / 1024)) * 1024)


def in_ember_terms(message: str, engine: str, context_key: str | None, tokens: int | None = None) -> str:
    """``message`` with every llama-server flag it names replaced by Ember's way to set it.

    ``tokens``: the context to name (a diagnosis' computed fix), else one read from the message."""
    if not message:
        return message
    out = message
    size = str(tokens) if tokens else tokens_for(message)
    for term in TERMS:
        if term.engines and engine not in term.engines:
            continue
        if "{context}" in term.ember and not context_key:
            continue
        text = term.ember.replace("{context}", context_key or "").replace("{tokens}", size)
        out = term.regex.sub(lambda _m, t=text: t, out)
    return out
