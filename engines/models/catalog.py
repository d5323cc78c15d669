"""Every model Ember can offer, with the engine and the fit on a machine, before a byte is downloaded.

Two sources: the local models (starter and user-added files, read from their
own headers) and the curated catalog ``resources/models.json`` (one
:class:`~engines.models.store.ModelSpec` per variant, named by the variant id).

The fit of a GGUF is the same estimate auto-NGL uses at launch
(:func:`engines.machine.fit.estimate`, i.e. xllamacpp's): for a local file on its real
header; for a catalog variant on a header read remotely (``remote_gguf``, when
cached) or else on a synthetic header built from the catalog's facts, whose
tensor sizes add up to the file size. Every GGUF variant carries the exact
size of each file as a public listing of its repository records it
(``resources/hub_listings.json``), or as the Hub listed it at the last
refresh (:func:`refresh`); only a file whose size is not known is estimated
from the parameter count and llama.cpp's own published size of the
quantization type, and the row says "estimated". Other formats: parameters x bytes per
weight, KV cache from the attention shape. A missing fact gives ``unknown``,
never a silent guess.

Results are cached per (hardware, context, engines installed, remote headers
read): the whole catalog costs tens of milliseconds the first time and well
under that after (bench/catalog_fit.py prints both).
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from engines.units import DEFAULT_N_CTX, GIB, MIB, size
from engines.machine import fit as F
from engines.machine import gguf_info
from engines.machine.hardware import HardwareProfile
from engines.models import listings, records, remote_gguf, store
from engines.running import selection
from engines.running.backends import LABELS, availability, installed_engines

log = logging.getLogger(__name__)

#: The badges, best first. ``unknown``: a fact the estimate needs is missing.
FITS = ("gpu", "partial", "cpu", "none", "unavailable", "unknown")
BADGES = {"gpu": "Fits on your GPU", "partial": "Partly on the GPU", "cpu": "Runs on the CPU only, slower",
          "none": "Does not fit in memory", "unavailable": "No engine for it here",
          "unknown": "Fit unknown"}
AUTO = "auto"
#: How a row names a size the Hub listed (an estimate always says "estimated").
EXACT = "exact size from the Hub's listing"

#: llama.cpp's own table (tools/quantize/quantize.cpp): file size in GiB of Llama-3-8B
#: (8,030,261,248 parameters) in each quantization type. Gives bits per weight for an estimate.
_LLAMA3_8B_PARAMS = 8_030_261_248
_LLAMACPP_SIZES_GIB = {"Q2_K": 2.96, "Q3_K_S": 3.41, "Q3_K_M": 3.74, "Q3_K_L": 4.03, "Q4_K_S": 4.37,
                       "Q4_K_M": 4.58, "Q5_K_S": 5.21, "Q5_K_M": 5.33, "Q6_K": 6.14, "Q8_0": 7.96}
GGUF_BITS_PER_WEIGHT = {q: g * GIB * 8 / _LLAMA3_8B_PARAMS for q, g in _LLAMACPP_SIZES_GIB.items()}
GGUF_BITS_PER_WEIGHT.update({"F16": 16.0, "BF16": 16.0})

#: Bytes per weight of the other formats: 16-bit originals; 4/8-bit with one fp16 scale and zero
#: per group of 128 (AWQ/GPTQ) or scale and bias per group of 64 (MLX).
BYTES_PER_WEIGHT = {("pytorch", "none"): 2.0, ("awq", "int4"): 0.5 + 4 / 128, ("gptq", "int4"): 0.5 + 4 / 128,
                    ("gptq", "int8"): 1.0 + 4 / 128, ("gptq", "int3"): 0.375 + 4 / 128,
                    ("mlx", "4bit"): 0.5 + 4 / 64, ("mlx", "8bit"): 1.0 + 4 / 64}
VLLM_MEMORY_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization


@dataclass(frozen=True)
class Entry:
    model: dict
    variant: dict


@functools.lru_cache(maxsize=1)
def _data() -> dict:
    """The catalog as shipped (``resources/models.json``), before any refreshed listing."""
    return json.loads(resources.files("resources").joinpath("models.json").read_text(encoding="utf-8"))


def file_names(variant: dict) -> list[str]:
    """The variant's file names, in download order (a GGUF lists objects with sizes, others plain names)."""
    return [f["name"] if isinstance(f, dict) else f for f in variant.get("files") or []]


def _model_facts(m: dict) -> dict:
    """The model as the estimate should see it: no sliding window that is not smaller than the context."""
    att = m.get("attention") or {}
    sw, ctx = att.get("sliding_window"), m.get("context_length")
    if sw and ctx and sw >= ctx:  # a window as long as the context is full attention (Phi-3.5's 262,144)
        m = {**m, "attention": {**att, "sliding_window": None}}
    return m


@functools.lru_cache(maxsize=1)
def entries() -> dict[str, Entry]:
    """variant id -> (model, variant) for every catalog variant, in file order, with the refreshed listings applied."""
    saved = listings.load_cache()
    out = {}
    for m in _data()["models"]:
        m = _model_facts(m)
        for v in m["variants"]:
            if v["format"] == "gguf" and v["repo"] in saved:
                v, _ = apply_listing(v, saved[v["repo"]])
            out[v["id"]] = Entry(m, v)
    return out


def reload() -> None:
    """Forget the catalog read so far (after a refresh): the next call applies the saved listings anew."""
    entries.cache_clear()
    clear_cache()


# -- the Hub's listing, now ---------------------------------------------------------------------------

_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


def _stem(name: str) -> str:
    """``X-Q8_0-00001-of-00002.gguf`` and ``X-Q8_0.gguf`` -> ``x-q8_0`` (the file's name without split or folder)."""
    base = name.rsplit("/", 1)[-1]
    return _SPLIT.sub("", base).removesuffix(".gguf").removesuffix(".GGUF").lower()


def _same_quant(listing: listings.RepoListing, names: list[str]) -> list[str]:
    """The files the Hub lists now for the quantization ``names`` were: renamed (case) or split differently."""
    stem = _stem(names[0])
    found = sorted(n for n in listing.files if n.lower().endswith(".gguf") and _stem(n) == stem)
    return found


def apply_listing(variant: dict, listing: listings.RepoListing) -> tuple[dict, list[listings.Change]]:
    """The variant as the Hub lists its repository now, and what differs from the shipped catalog.

    Sizes and sha256 come from the listing; a file the Hub now spells or splits
    differently is replaced by what it lists; a file it no longer has is kept
    (the download will say so) and reported as missing.
    """
    vid, names = variant["id"], file_names(variant)
    recorded = {f["name"]: f for f in variant.get("files") or [] if isinstance(f, dict)}
    changes: list[listings.Change] = []
    if not all(n in listing.files for n in names):
        now = _same_quant(listing, names)
        if now:
            changes.append(listings.Change(vid, "renamed", f"the Hub lists {', '.join(now)} instead of "
                                                           f"{', '.join(names)}", names, now))
            names = now
        else:
            missing = [n for n in names if n not in listing.files]
            changes.append(listings.Change(vid, "missing", f"{', '.join(missing)} is no longer in {listing.repo}",
                                           missing, None))
            return {**variant, "hub_missing": missing}, changes
    files = []
    for n in names:
        f = listing.files[n]
        old = recorded.get(n, {})
        if old.get("size_bytes") is not None and f.size_bytes is not None and old["size_bytes"] != f.size_bytes:
            changes.append(listings.Change(vid, "size", f"{n}: {old['size_bytes']:,} bytes -> {f.size_bytes:,}",
                                           old["size_bytes"], f.size_bytes))
        if old.get("sha256") and f.sha256 and old["sha256"] != f.sha256:
            changes.append(listings.Change(vid, "sha256", f"{n}: the file was replaced (new sha256)",
                                           old["sha256"], f.sha256))
        files.append({"name": n, "size_bytes": f.size_bytes, **({"sha256": f.sha256} if f.sha256 else {})})
    sizes = [f["size_bytes"] for f in files]
    out = {**variant, "files": files, "hub_revision": listing.revision, "hub_listed_at": listing.listed_at}
    if all(s is not None for s in sizes):
        out["size_bytes"] = sum(sizes)
    return out, changes


def gguf_repos() -> list[str]:
    """The repositories of the catalog's GGUF variants (what a refresh lists)."""
    return sorted({v["repo"] for m in _data()["models"] for v in m["variants"] if v["format"] == "gguf"})


def refresh(max_age: float | None = None, lister=listings.list_repo) -> listings.RefreshResult:
    """Re-list the catalog's GGUF repositories on the Hub, save the result, and say which entries changed.

    ``max_age``: reuse listings saved less than this many seconds ago (None: list
    all again). A repository that cannot be listed keeps what it had.
    """
    saved, result = listings.refresh(gguf_repos(), max_age=max_age, lister=lister)
    for m in _data()["models"]:
        for v in m["variants"]:
            if v["format"] == "gguf" and v["repo"] in saved:
                result.changes += apply_listing(v, saved[v["repo"]])[1]
    reload()
    return result


def _quant_label(v: dict) -> str:
    return {"pytorch": "original weights", "awq": "AWQ Int4", "mlx": f"MLX {v['quantization']}"}.get(
        v["format"], f"{v['format'].upper()} {v['quantization']}" if v["format"] == "gptq" else v["quantization"])


def spec_of(entry: Entry, with_path: bool = True) -> store.ModelSpec:
    m, v = entry.model, entry.variant
    spec = store.ModelSpec(
        name=v["id"], format=v["format"], quantization=v["quantization"], architecture=m["architecture"],
        display_name=f"{m['display_name']} ({_quant_label(v)})", source="catalog",
        gguf_architecture=m.get("gguf_architecture", "") if v["format"] == "gguf" else "",
        size_bytes=v.get("size_bytes"), parameters=m.get("parameters"), block_count=m.get("block_count"),
        context_length=m.get("context_length"), attention={k: x for k, x in (m.get("attention") or {}).items()
                                                          if x is not None},
        repo=v["repo"], files=file_names(v), description=m.get("description", ""),
        has_vision="vision" in (m.get("tags") or []),
    )
    if with_path:
        spec.path = records.ready_path(spec.name)
    return spec


def catalog_specs() -> list[store.ModelSpec]:
    return [spec_of(e) for e in entries().values()]


def resolve(name: str) -> store.ModelSpec:
    """A catalog variant by id (``path`` set once downloaded and verified); LookupError if none.

    A model id (``qwen3-8b``) picks its first GGUF Q4_K_M variant, else its first variant.
    """
    e = entries().get(name)
    if e is None:
        variants = [x for x in entries().values() if x.model["id"] == name]
        if not variants:
            raise LookupError(name)
        e = next((x for x in variants if x.variant["quantization"] == "Q4_K_M"), variants[0])
    return spec_of(e)


# -- memory facts ---------------------------------------------------------------------------------

def default_context(spec: store.ModelSpec) -> int:
    return min(DEFAULT_N_CTX, spec.context_length or DEFAULT_N_CTX)


def _vocab(name: str) -> int | None:
    e = entries().get(name)
    return e.model.get("vocab_size") if e else None


def estimated_gguf_size(spec: store.ModelSpec) -> tuple[int | None, str]:
    """File size of a catalog GGUF: exact from the Hub's listing, else parameters x llama.cpp's bits per weight."""
    if spec.size_bytes:
        return spec.size_bytes, EXACT
    bpw = GGUF_BITS_PER_WEIGHT.get(spec.quantization.upper())
    if not spec.parameters:
        return None, "the parameter count is not in the catalog"
    if bpw is None:
        return None, f"no size table for {spec.quantization}"
    return int(spec.parameters * bpw / 8), f"estimated: {spec.parameters / 1e9:.1f}B parameters x {bpw:.2f} bits"


def synthetic_info(spec: store.ModelSpec) -> tuple[gguf_info.GGUFInfo | None, str]:
    """A GGUF header made of the catalog's facts, for the same estimate auto-NGL runs; (None, why) if it can't be.

    The tensor table has one tensor per block and the output/token-embedding
    matrices (vocab x embedding at the file's bits per weight); their sizes add
    up to the file size, which is what the estimate spreads over layers.
    """
    arch, att, blocks = spec.gguf_architecture, spec.attention, spec.block_count
    vocab = _vocab(spec.name)
    missing = [k for k, v in (("GGUF architecture", arch), ("block count", blocks), ("vocabulary size", vocab),
                              ("embedding length", att.get("embedding_length")),
                              ("head count", att.get("head_count"))) if not v]
    if missing:
        return None, f"the catalog lacks its {', '.join(missing)}"
    file_size, source = estimated_gguf_size(spec)
    if file_size is None:
        return None, f"its download size is unknown ({source})"
    md: dict[str, object] = {"general.architecture": arch, "general.name": spec.display_name,
                             f"{arch}.block_count": blocks, f"{arch}.embedding_length": att["embedding_length"],
                             f"{arch}.attention.head_count": att["head_count"],
                             f"{arch}.attention.head_count_kv": att.get("head_count_kv", att["head_count"]),
                             "tokenizer.ggml.tokens": gguf_info.SizedArray(vocab, 8)}
    for key in ("key_length", "value_length", "sliding_window"):
        if att.get(key):
            md[f"{arch}.attention.{key}"] = att[key]
    if spec.context_length:
        md[f"{arch}.context_length"] = spec.context_length
    bits = file_size * 8 / spec.parameters if spec.parameters else 16.0
    out_bytes = min(int(vocab * att["embedding_length"] * bits / 8), file_size // 4)
    per_block = (file_size - 2 * out_bytes) // blocks
    tensors = [gguf_info.TensorInfo("token_embd.weight", [att["embedding_length"], vocab], 0, 0, out_bytes),
               gguf_info.TensorInfo("output.weight", [att["embedding_length"], vocab], 0, 0, out_bytes)]
    tensors += [gguf_info.TensorInfo(f"blk.{i}.weights", [per_block], 0, 0, per_block) for i in range(blocks)]
    return gguf_info.GGUFInfo(Path(spec.name + ".gguf"), file_size, md, tensors), source


def _cached_remote_header(spec: store.ModelSpec) -> gguf_info.GGUFInfo | None:
    if not (spec.repo and spec.files):
        return None
    return remote_gguf.cached(spec.repo, spec.files[0])


def kv_cache_bytes(spec: store.ModelSpec, n_ctx: int) -> int | None:
    """f16 KV cache of every layer at n_ctx (an upper bound for sliding-window models)."""
    att = spec.attention
    heads, kv_heads = att.get("head_count"), att.get("head_count_kv", att.get("head_count"))
    emb = att.get("embedding_length")
    k = att.get("key_length") or (emb // heads if emb and heads else None)
    v = att.get("value_length") or k
    if not (spec.block_count and kv_heads and k):
        return None
    return spec.block_count * n_ctx * kv_heads * (k + v) * 2


def weights_bytes(spec: store.ModelSpec) -> tuple[int | None, str]:
    if spec.size_bytes and spec.format != "gguf":
        return spec.size_bytes, "download size"
    per = BYTES_PER_WEIGHT.get((spec.format, spec.quantization.lower()))
    if not spec.parameters:
        return None, "the parameter count is not in the catalog"
    if per is None:
        return None, f"no bytes-per-weight figure for {spec.format} {spec.quantization}"
    return int(spec.parameters * per), f"estimated: {spec.parameters / 1e9:.1f}B parameters x {per:g} bytes"


def _memory_capacity(hw: HardwareProfile) -> int:
    """RAM plus GPU memory that is not RAM (unified memory counts once)."""
    if hw.apple_silicon or hw.is_mac_arm:
        return hw.ram_total_bytes
    return hw.ram_total_bytes + sum(g.memory_free_bytes for g in hw.gpus if g.vendor != "apple")


def _numbers(weights: int | None, source: str, kv: int | None, n_ctx: int) -> str:
    """The figures behind a fit, as the row's reason ends with them."""
    return f"weights {size(weights)} ({source}), KV cache {size(kv)} at {n_ctx:,} tokens"


# -- one row ----------------------------------------------------------------------------------------

def _base_row(spec: store.ModelSpec, sel: selection.Selection, hw: HardwareProfile, n_ctx: int) -> dict:
    return {"name": spec.name, "display_name": spec.display_name or spec.name, "format": spec.format,
            "quantization": spec.quantization, "architecture": spec.architecture, "engine": sel.engine,
            "fit": "unavailable", "badge": "", "gpu_layers": 0,
            "total_layers": (spec.block_count or 0) + 1 if spec.block_count else None,
            "reason": sel.reason, "reasons": sel.reasons, "size_bytes": spec.size_bytes,
            "size_exact": spec.size_bytes is not None,
            "local": spec.is_local, "source": spec.source, "repo": spec.repo, "files": list(spec.files),
            "description": spec.description,
            "n_ctx": n_ctx, "weights_bytes": None, "weights_source": None, "kv_cache_bytes": None,
            "devices": [{"name": g.name, "backend": g.backend, "memory_free_bytes": g.memory_free_bytes,
                         "memory_total_bytes": g.memory_total_bytes} for g in hw.gpus],
            "ram_total_bytes": hw.ram_total_bytes, "ram_available_bytes": hw.ram_available_bytes}


def _fit_gguf(spec: store.ModelSpec, hw: HardwareProfile, n_ctx: int, r: dict) -> None:
    info, source = None, ""
    if spec.is_local:
        try:
            info, source = gguf_info.read(spec.path), "file header"
        except gguf_info.GGUFError as exc:
            r.update(fit="unknown", reason=f"the file cannot be read: {exc.problem}")
            return
    if info is None:
        info = _cached_remote_header(spec)
        source = "remote header" if info is not None else source
    if info is None:
        info, source = synthetic_info(spec)
        if info is None:
            r.update(fit="unknown", reason=f"fit unknown: {source}")
            return
    est = F.estimate(info, hw, n_ctx)
    r.update(fit=est.fit, gpu_layers=est.gpu_layers, total_layers=est.total_layers,
             weights_bytes=est.weights_bytes, weights_source=source, kv_cache_bytes=est.kv_cache_bytes,
             estimate=est.to_dict(), vram_bytes=est.vram_bytes, total_bytes=est.total_bytes)
    need = max(est.total_bytes, est.weights_bytes + est.kv_cache_bytes)
    cap = _memory_capacity(hw)
    numbers = _numbers(est.weights_bytes, source, est.kv_cache_bytes, n_ctx)
    if need > cap:
        r.update(fit="none", gpu_layers=0, reason=f"needs about {size(need)}; this computer has {size(cap)} "
                                                  f"of RAM and GPU memory together; {numbers}")
    else:
        r["reason"] = f"{r['reason']}; {est.summary(kv=False)}; {numbers}"


def _fit_other(spec: store.ModelSpec, hw: HardwareProfile, n_ctx: int, r: dict, engine: str | None) -> None:
    weights, wsource = weights_bytes(spec)
    kv = kv_cache_bytes(spec, n_ctx)
    r.update(weights_bytes=weights, weights_source=wsource, kv_cache_bytes=kv)
    if engine is None:
        return
    if weights is None or kv is None:
        what = wsource if weights is None else "the attention shape is not in the catalog"
        r.update(fit="unknown", reason=f"{r['reason']}; fit unknown: {what}")
        return
    need = weights + kv
    total = r["total_layers"] or 1
    numbers = _numbers(weights, wsource, kv, n_ctx)
    cuda = [g for g in hw.gpus if g.backend == "cuda"]
    vram = sum(g.memory_free_bytes for g in cuda)
    if engine in ("vllm", "sglang"):
        room = int(vram * VLLM_MEMORY_UTILIZATION)
        if need <= room:
            r.update(fit="gpu", gpu_layers=total, reason=f"{r['reason']}; needs {size(need)} of {size(room)} "
                                                         f"GPU memory it may use; {numbers}")
        else:
            r.update(fit="none", reason=f"{LABELS[engine]} keeps the whole model on the GPU: needs {size(need)}, "
                                        f"{size(room)} usable; {numbers}")
        return
    if engine == "mlx":
        metal = sum(g.memory_free_bytes for g in hw.gpus if g.backend == "metal")
        if hw.is_mac_arm and need <= metal:
            r.update(fit="gpu", gpu_layers=total, reason=f"{r['reason']}; {size(need)} of {size(metal)} GPU memory; "
                                                         f"{numbers}")
        elif need <= hw.ram_total_bytes and not hw.is_mac_arm:
            r.update(fit="cpu", reason=f"{r['reason']}; MLX on the CPU; {numbers}")
        else:
            r.update(fit="none", reason=f"needs {size(need)}; {size(metal or hw.ram_total_bytes)} available; {numbers}")
        return
    # transformers: device_map="auto" fills the GPUs, then RAM
    if cuda and need <= vram:
        r.update(fit="gpu", gpu_layers=total, reason=f"{r['reason']}; {numbers}")
    elif need <= vram + hw.ram_total_bytes:
        if cuda:
            per_layer = max(1, (weights // total))
            layers = max(0, min(total - 1, int((vram - kv) // per_layer)))
            r.update(fit="partial" if layers else "cpu", gpu_layers=layers,
                     reason=f"{r['reason']}; {layers} of {total} layers on the GPU; {numbers}")
        else:
            r.update(fit="cpu", reason=f"{r['reason']}; {numbers}")
    else:
        r.update(fit="none", reason=f"needs {size(need)}; this computer has {size(_memory_capacity(hw))} of RAM and "
                                    f"GPU memory together; {numbers}")


def row(spec: store.ModelSpec, hw: HardwareProfile, installed: dict[str, bool] | None | str = AUTO,
        n_ctx: int | None = None) -> dict:
    """One model's line in `ember models --json` and the models window.

    ``installed``: engines installed ("auto": this machine's; None: judge by the rules alone,
    for another machine's profile).
    """
    if installed == AUTO:
        installed = installed_engines()
    sel = selection.select(spec, hw, installed=installed)
    n_ctx = n_ctx or default_context(spec)
    r = _base_row(spec, sel, hw, n_ctx)
    if spec.format == "gguf" and sel.engine in ("llamacpp", None):
        if sel.engine is None:
            _fit_other(spec, hw, n_ctx, r, None)
        else:
            _fit_gguf(spec, hw, n_ctx, r)
    else:
        _fit_other(spec, hw, n_ctx, r, sel.engine)
    if sel.engine is None:
        r["fit"] = "unavailable"
        eligible = [e for e in sel.eligible if e != "sglang"]
        if eligible:
            r["install_command"] = availability(eligible[0]).install_command
    r["badge"] = BADGES[r["fit"]] + (f" ({r['gpu_layers']} of {r['total_layers']} layers)"
                                     if r["fit"] == "partial" else "")
    return r


# -- all rows, cached -----------------------------------------------------------------------------------

_cache: dict[tuple, dict[str, dict]] = {}
_cache_generation = 0  # remote_gguf.generation() the cached rows were computed at
_MIB64 = 64 * MIB


def _hw_key(hw: HardwareProfile) -> tuple:
    gpus = tuple((g.name, g.backend, g.memory_total_bytes, g.memory_free_bytes // _MIB64, g.llamacpp_device)
                 for g in hw.gpus)
    return (hw.os, hw.arch, hw.ram_total_bytes, hw.apple_silicon, gpus)


def clear_cache() -> None:
    """Forget every computed row (bench/catalog_fit.py measures the cold cost this way)."""
    _cache.clear()


def _rows_cache(key: tuple) -> dict[str, dict]:
    """The cached rows for ``key``; all are dropped once a remote header was read since they were made."""
    global _cache_generation
    if _cache_generation != remote_gguf.generation():
        _cache.clear()
        _cache_generation = remote_gguf.generation()
    return _cache.setdefault(key, {})


def catalog_rows(hw: HardwareProfile, installed: dict[str, bool] | None | str = AUTO,
                 n_ctx: int | None = None) -> list[dict]:
    """Rows of every catalog variant, cached per (hardware, context, engines installed, downloaded files)."""
    if installed == AUTO:
        installed = installed_engines()
    key = (_hw_key(hw), n_ctx, tuple(sorted(installed.items())) if installed is not None else None)
    cached = _rows_cache(key)
    out = []
    ready = records.ready_map()
    for vid, e in entries().items():
        path = ready.get(vid)
        hit = cached.get(vid)
        if hit is None or hit[0] != path:
            spec = spec_of(e, with_path=False)
            spec.path = path
            hit = (path, {**row(spec, hw, installed, n_ctx), **_listing_fields(e)})
            cached[vid] = hit
        out.append(copy.copy(hit[1]))
    return out


def _listing_fields(e: Entry) -> dict:
    """Where a catalog row's files and sizes come from: the listings it cites, or the Hub at the last refresh."""
    v = e.variant
    out = {"listings": list(v.get("listings") or []), "hub_missing": list(v.get("hub_missing") or [])}
    if v.get("hub_listed_at"):
        out["hub_listed_at"] = v["hub_listed_at"]
        out["hub_revision"] = v.get("hub_revision")
    return out


def sort_rows(rows_: list[dict]) -> list[dict]:
    """Best fit first; local models before catalog ones at the same fit; otherwise the catalog's order."""
    rank = {f: i for i, f in enumerate(("gpu", "partial", "cpu", "unknown", "none", "unavailable"))}
    return sorted(rows_, key=lambda r: (rank.get(r["fit"], 9), not r["local"]))


def rows(hw: HardwareProfile, installed: dict[str, bool] | None | str = AUTO, n_ctx: int | None = None,
         fits: bool = False, sort: bool = True, local: list[store.ModelSpec] | None = None) -> list[dict]:
    """Local models and every catalog variant, with engine, fit badge and the numbers behind it.

    ``fits``: only what can run here (gpu, partial, cpu). ``local``: the local models when the
    caller has read them already (default: :func:`store.local_models`).
    """
    if installed == AUTO:
        installed = installed_engines()
    out = [row(spec, hw, installed, n_ctx) for spec in (store.local_models() if local is None else local)]
    out += catalog_rows(hw, installed, n_ctx)
    if fits:
        out = [r for r in out if r["fit"] in ("gpu", "partial", "cpu")]
    return sort_rows(out) if sort else out

