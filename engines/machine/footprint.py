"""How much memory a launch takes: the weights, the KV cache and the compute buffers.

One arithmetic for every place Ember says a size: the launch dialog and auto-NGL
(:mod:`engines.machine.fit`), the models window (:mod:`engines.models.catalog`) and the
diagnosis ("KV cache about 12 MiB instead of 6 MiB"). The KV cache follows llama.cpp's
own rules, read off its start-up log (``llama_context`` and ``llama_kv_cache`` lines) for
the starter at several contexts, slot counts and cache types
(``tests/integration/test_footprint_real.py`` compares the two):

- the cache has one stream per slot (``kv_unified`` off, llama.cpp's default); each holds
  ``n_ctx / n_parallel`` cells rounded up to 256 (``n_ctx_seq``), so the total may grow;
- layers with sliding-window attention hold ``min(n_ctx_seq, window + n_ubatch)`` cells,
  rounded up to 256 (``swa_full`` gives them the whole context);
- a cell holds K and V of every KV head of a layer, at the cache type's size (f16: 2 bytes,
  q8_0: 34 bytes per 32 values);
- ``n_ubatch`` is 512, or the context when it is smaller.

The compute buffer is an estimate: the activations of one layer for each token of a
micro-batch, plus the attention mask (2 bytes per token and cell). Engines that keep
every layer's whole context (Transformers' cache) use :func:`full_context_kv_bytes`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from engines.machine import gguf_info
from engines.machine.ggml_types import TENSOR_TYPES

log = logging.getLogger(__name__)

CELL_PAD = 256          # llama.cpp pads each stream's cells (and the window's) to this
DEFAULT_BATCH = 2048    # llama.cpp's n_batch
DEFAULT_UBATCH = 512    # and n_ubatch
MASK_BYTES = 2          # the attention mask holds f16

#: Architectures whose layers alternate sliding-window and full attention in llama.cpp, by the
#: period of the pattern (``hparams.set_swa_pattern``): in each period all layers but the last slide.
SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "gpt-oss": 2, "exaone4": 4,
              "llama4": 4, "smallthinker": 4}

_CACHE_TYPES = {t.name.lower(): t for t in TENSOR_TYPES.values()}


@dataclass(frozen=True)
class Attention:
    """What the KV cache's and the compute buffer's sizes depend on, one entry per layer where they vary."""

    layers: int
    kv_heads: tuple[int, ...]       # per layer (0: a layer without a KV cache)
    key_length: int                 # per head, in values
    value_length: int
    sliding: tuple[bool, ...]       # per layer: attention over a window only
    window: int | None = None       # the window, in tokens
    embedding: int = 0
    heads: int = 0
    feed_forward: int = 0

    @classmethod
    def from_gguf(cls, info: gguf_info.GGUFInfo) -> "Attention | None":
        """From a GGUF header (a real file's or the catalog's synthetic one); None when it lacks the facts."""
        return cls.from_facts(info.architecture, info.block_count,
                              {k.split(".", 1)[1]: v for k, v in info.metadata.items()
                               if k.startswith(info.architecture + ".")})

    @classmethod
    def from_facts(cls, arch: str, layers: int, facts: dict) -> "Attention | None":
        """From GGUF-style keys without the architecture prefix: ``attention.head_count_kv``,
        ``embedding_length``... (a GGUF header, or a Hugging Face config said that way)."""
        get = facts.get
        embedding = _largest(get("embedding_length"))
        heads = _per_layer(get("attention.head_count"), layers)
        kv_heads = _per_layer(get("attention.head_count_kv", get("attention.head_count")), layers)
        if not layers or not heads or not kv_heads:
            return None
        head_dim = embedding // max(heads) if embedding and max(heads) else 0
        lora = get("attention.kv_lora_rank")
        if lora:  # multi-head latent attention (DeepSeek): one latent per token, and its rotary part
            key_length = int(lora) + int(get("rope.dimension_count") or 0)
            value_length = int(lora)  # older llama.cpp keeps it; newer ones share K's: an upper bound
            kv_heads = tuple(1 if h else 0 for h in kv_heads)
        else:
            key_length = int(get("attention.key_length") or head_dim)
            value_length = int(get("attention.value_length") or key_length)
        if not key_length:
            return None
        window = get("attention.sliding_window")
        window = int(window) if window else None
        feed_forward = _largest(get("feed_forward_length")) or 4 * embedding  # unknown: the usual ratio
        return cls(layers, kv_heads, key_length, value_length, _sliding(arch, layers, window, get),
                   window, embedding, max(heads), feed_forward)

    def cell_bytes(self, layer: int, cache_type_k: str = "f16", cache_type_v: str = "f16") -> float:
        """Bytes one cell (one token) takes in ``layer``: its K and V for every KV head."""
        heads = self.kv_heads[layer]
        return heads * (self.key_length * _bytes_per_value(cache_type_k)
                        + self.value_length * _bytes_per_value(cache_type_v))


@dataclass(frozen=True)
class Cells:
    """How llama.cpp lays out a context: its real total, the cells per slot, the sliding layers' cells."""

    n_ctx: int          # what llama.cpp allocates in all (its log's ``n_ctx``)
    per_slot: int       # ``n_ctx_seq``
    streams: int        # one per slot, or one shared (kv_unified)
    sliding: int        # cells of a sliding-window layer, per stream
    ubatch: int


def cells(n_ctx: int, n_parallel: int = 1, window: int | None = None, unified: bool = False,
          swa_full: bool = False, n_batch: int = DEFAULT_BATCH, n_ubatch: int = DEFAULT_UBATCH) -> Cells:
    """llama.cpp's cells for a context of ``n_ctx`` tokens over ``n_parallel`` slots."""
    n_ctx, n_parallel = max(1, int(n_ctx)), max(1, int(n_parallel))
    ubatch = min(n_ubatch, n_batch, n_ctx)
    if unified:
        per_slot = _pad(n_ctx)
        streams, total = 1, per_slot
    else:
        per_slot = _pad(max(1, n_ctx // n_parallel))
        streams, total = n_parallel, per_slot * n_parallel
    sliding = per_slot
    if window and not swa_full:
        sliding = min(per_slot, _pad(window * (n_parallel if unified else 1) + ubatch))
    return Cells(total, per_slot, streams, sliding, ubatch)


def kv_cache_bytes(att: Attention, n_ctx: int, n_parallel: int = 1, cache_type_k: str = "f16",
                   cache_type_v: str | None = None, unified: bool = False, swa_full: bool = False) -> int:
    """The KV cache llama.cpp allocates for this context (every stream, every layer)."""
    c = cells(n_ctx, n_parallel, att.window, unified, swa_full)
    cache_type_v = cache_type_v or cache_type_k
    total = 0.0
    for layer in range(att.layers):
        n = c.sliding if att.sliding[layer] else c.per_slot
        total += n * c.streams * att.cell_bytes(layer, cache_type_k, cache_type_v)
    return int(total)


def kv_cache_per_layer(att: Attention, n_ctx: int, n_parallel: int = 1, cache_type: str = "f16") -> list[int]:
    """The same bytes, one entry per layer (for placing layers on GPUs)."""
    c = cells(n_ctx, n_parallel, att.window)
    return [int((c.sliding if att.sliding[i] else c.per_slot) * c.streams * att.cell_bytes(i, cache_type, cache_type))
            for i in range(att.layers)]


def compute_bytes(att: Attention, n_ctx: int, n_parallel: int = 1, unified: bool = False) -> int:
    """The compute buffer llama.cpp reserves, estimated: a layer's activations for each token of a
    micro-batch (FFN gate, up and product; queries and attention output; the residual stream), and the
    attention masks over the cells of one slot."""
    c = cells(n_ctx, n_parallel, att.window, unified)
    per_token = 4 * (3 * att.feed_forward + 2 * att.heads * att.key_length + 2 * att.embedding)
    masks = c.per_slot + (c.sliding if any(att.sliding) else 0)
    return int(c.ubatch * per_token + c.ubatch * masks * MASK_BYTES)


def full_context_kv_bytes(att: Attention, n_tokens: int, bytes_per_value: float = 2.0) -> int:
    """Engines that keep the whole context in every layer (Transformers' cache, vLLM's per request): an upper
    bound for sliding-window models."""
    return int(sum(n_tokens * att.kv_heads[i] * (att.key_length + att.value_length) * bytes_per_value
                   for i in range(att.layers)))


def weights_bytes(info: gguf_info.GGUFInfo) -> int:
    """The tensors' bytes (what llama.cpp maps), else the file's size."""
    return sum(t.n_bytes for t in info.tensors) or info.file_size


@dataclass(frozen=True)
class Footprint:
    """A llama.cpp launch's memory: what its log will report, before it starts."""

    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    cells: Cells

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes


def llamacpp(info: gguf_info.GGUFInfo, n_ctx: int, n_parallel: int = 1, cache_type_k: str = "f16",
             cache_type_v: str | None = None, unified: bool = False, swa_full: bool = False) -> Footprint:
    """The memory a llama.cpp launch of this GGUF takes; KV and compute 0 when the header lacks the facts."""
    att = Attention.from_gguf(info)
    weights = weights_bytes(info)
    if att is None:
        log.info("%s: no attention facts in the header; KV cache unknown", info.path)
        return Footprint(weights, 0, 0, cells(n_ctx, n_parallel, None, unified))
    return Footprint(weights, kv_cache_bytes(att, n_ctx, n_parallel, cache_type_k, cache_type_v, unified, swa_full),
                     compute_bytes(att, n_ctx, n_parallel, unified),
                     cells(n_ctx, n_parallel, att.window, unified, swa_full))


def facts_of(attention: dict) -> dict:
    """A model's attention facts as Ember keeps them (``ModelSpec.attention``: ``head_count``,
    ``embedding_length``...) in the GGUF-style keys :meth:`Attention.from_facts` reads."""
    top = {"embedding_length", "feed_forward_length", "context_length"}
    return {(k if k in top or k.startswith(("attention.", "rope.")) else f"attention.{k}"): v
            for k, v in attention.items()}


# -- helpers -----------------------------------------------------------------------------------------

def _pad(n: int) -> int:
    return int(math.ceil(n / CELL_PAD) * CELL_PAD)


def _bytes_per_value(cache_type: str) -> float:
    t = _CACHE_TYPES.get(str(cache_type).lower(), _CACHE_TYPES["f16"])
    return t.type_size / t.block_size


def _values(v) -> list[int]:
    if v is None or isinstance(v, gguf_info.SizedArray):
        return []
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v]
    return [int(v)]


def _largest(v) -> int:
    values = _values(v)
    return max(values) if values else 0


def _per_layer(v, layers: int) -> tuple[int, ...]:
    values = _values(v)
    if not values:
        return ()
    if len(values) == 1:
        return tuple(values * layers)
    return tuple((values + [values[-1]] * layers)[:layers])


def _sliding(arch: str, layers: int, window: int | None, get) -> tuple[bool, ...]:
    """Which layers slide: the header's own pattern when it has one, else llama.cpp's period for the family."""
    if not window:
        return (False,) * layers
    pattern = get("attention.sliding_window_pattern")
    if isinstance(pattern, (list, tuple)) and pattern:
        flags = [bool(x) for x in pattern]
        return tuple((flags * layers)[:layers])
    period = int(pattern) if isinstance(pattern, int) and pattern > 0 else SWA_PERIOD.get(arch)
    if not period:
        return (False,) * layers
    return tuple(i % period < period - 1 for i in range(layers))
