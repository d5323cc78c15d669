"""Auto-NGL: how many layers of a GGUF model fit on the GPUs, before launch.

The seed's rule: when ``n_gpu_layers`` is not given (or -1), estimate it the
Ollama way from the devices xllamacpp detects
(``xllamacpp.memory.estimate_gpu_layers``), pass the number explicitly, fall
back to all layers when the estimate fails, and ignore multimodal projectors
embedded in the GGUF.

xllamacpp's estimate reads the file with ``gguf.GGUFReader``, which parses the
whole vocabulary (10 s for the starter). We feed the same function Ember's fast
header (``gguf_info``) instead, so the estimate is the library's own and takes
milliseconds; the ``gguf`` package (and the numpy it imports) is never loaded,
which keeps both out of the desktop bundle. After launch, :func:`parse_loaded` reads what really happened
from the engine's log.
"""
from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from engines import units
from engines.machine import footprint, gguf_info
from engines.machine.hardware import HardwareProfile, llamacpp_device_dicts

log = logging.getLogger(__name__)

ALL_LAYERS = 999  # llama.cpp clamps to the model's layer count
DEFAULT_BATCH = 512
_patch_lock = threading.Lock()


@dataclass
class FitEstimate:
    """What auto-NGL decided, with the numbers behind it."""

    n_gpu_layers: int          # the value passed to llama.cpp
    gpu_layers: int            # layers predicted on the GPU(s) (incl. the output layer)
    total_layers: int          # block count + output layer
    vram_bytes: int = 0        # predicted GPU memory use
    total_bytes: int = 0       # memory if fully loaded (weights + KV + graph; on GPUs with the placement's reserve)
    gpu_bytes: list[int] = field(default_factory=list)
    kv_cache_bytes: int = 0
    weights_bytes: int = 0
    devices: list[dict] = field(default_factory=list)
    fallback: str | None = None  # why the estimate was not used
    tensor_split: list[int] = field(default_factory=list)  # layers per GPU, for multi-GPU launches
    compute_bytes: int = 0     # llama.cpp's compute buffers (estimate)
    n_ctx: int = 0             # the context llama.cpp will really allocate (cells rounded up per slot)
    device_bytes: list[int] = field(default_factory=list)  # what each GPU will hold, by the same arithmetic

    # vram_bytes and gpu_bytes are the placement's budget (Ollama's: its graph reserve and a minimum per
    # GPU included), used to decide the layers; what people read is needs_bytes and device_bytes.

    @property
    def needs_bytes(self) -> int:
        """What the launch takes, as llama.cpp's log will report it: weights, KV cache, compute buffers
        (:mod:`engines.machine.footprint`); the number every window and the diagnosis say."""
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes

    @property
    def fit(self) -> str:
        """gpu | partial | cpu, as the models window's badge."""
        if self.fallback and self.devices:
            return "gpu"
        if not self.devices or self.gpu_layers == 0:
            return "cpu"
        return "gpu" if self.gpu_layers >= self.total_layers else "partial"

    def memory_line(self) -> str:
        """``needs about 285 MiB: weights 235 MiB, KV cache 27 MiB, compute 23 MiB``: the arithmetic, in one line."""
        return (f"needs about {units.size(self.needs_bytes)}: weights {units.size(self.weights_bytes)}, "
                f"KV cache {units.size(self.kv_cache_bytes)}, compute {units.size(self.compute_bytes)}")

    def summary(self, kv: bool = True) -> str:
        """One line for people; ``kv=False`` where the caller states the KV cache itself."""
        if not self.devices:
            memory = f"; {self.memory_line()}" if kv and self.needs_bytes else ""
            return f"CPU only: no GPU that llama.cpp can use ({self.total_layers} layers on the CPU){memory}"
        if self.fallback:
            return f"estimate failed ({self.fallback}); offloading all layers as the seed prescribes"
        per = ", ".join(f"{d['name']} {units.size(b)} of {units.size(d['memory_free'])} free"
                        for d, b in zip(self.devices, self.device_bytes or self.gpu_bytes or [0] * len(self.devices)))
        kv_text = f"{self.memory_line()}; " if kv else ""
        return f"{self.gpu_layers} of {self.total_layers} layers on GPU; {kv_text}{per}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fit"] = self.fit
        d["needs_bytes"] = self.needs_bytes
        return d


class _HeaderReader:
    """Stands in for gguf.GGUFReader inside xllamacpp.memory: returns our parsed header."""

    def __init__(self, info: gguf_info.GGUFInfo):
        self.info = info

    def __call__(self, path, mode="r"):
        return self


def _xllamacpp_memory():
    """xllamacpp's estimate module, imported on first use."""
    from xllamacpp import memory  # loads llama.cpp (50 MB): only once an estimate is asked for
    return memory


@contextmanager
def _reading_header(memory, info: gguf_info.GGUFInfo, attention: footprint.Attention | None):
    """While inside, xllamacpp.memory reads ``info`` where it would open the file with gguf, and places
    layers with Ember's KV arithmetic (:mod:`engines.machine.footprint`, llama.cpp's own rules).

    Its estimate reaches the file only through ``_import_gguf()`` and ``dump_metadata_json``;
    answered from the parsed header, neither the ``gguf`` package nor numpy is imported. Its
    ``graph_size`` gives the KV cache per layer (Ollama's arithmetic, which ignores llama.cpp's
    rounding and the sliding window's cap); ours replaces it, the graph reserve stays Ollama's.
    """
    with _patch_lock:
        saved = memory._import_gguf, memory.dump_metadata_json, memory.graph_size
        memory._import_gguf = lambda: (_HeaderReader(info), None)
        memory.dump_metadata_json = lambda reader, path: info.xllamacpp_dump()
        if attention is not None:
            def graph_size(metadata, context_length, batch_size, num_parallel, kv_cache_type):
                _, partial, full = saved[2](metadata, context_length, batch_size, num_parallel, kv_cache_type)
                return footprint.kv_cache_per_layer(attention, context_length, num_parallel, kv_cache_type), \
                    partial, full
            memory.graph_size = graph_size
        try:
            yield
        finally:
            memory._import_gguf, memory.dump_metadata_json, memory.graph_size = saved


def estimate(info: gguf_info.GGUFInfo, hw: HardwareProfile, n_ctx: int, n_parallel: int = 1,
             cache_type: str = "f16") -> FitEstimate:
    """Estimate GPU layers for a GGUF header on a machine (this one or a profile)."""
    total = info.block_count + 1
    devices = llamacpp_device_dicts(hw)
    for d in devices:
        if d["name"].lower().startswith(("metal", "mtl")):
            d["name"] = "Metal"  # the estimate special-cases Metal by this name
    try:
        attention = footprint.Attention.from_gguf(info)
        needs = footprint.llamacpp(info, n_ctx, n_parallel, cache_type)
    except Exception as exc:  # a header the arithmetic cannot read: the weights alone
        log.info("KV size estimate failed: %s", exc)
        attention, needs = None, footprint.Footprint(footprint.weights_bytes(info), 0, 0,
                                                     footprint.cells(n_ctx, n_parallel))
    weights, kv_bytes, compute = needs.weights_bytes, needs.kv_cache_bytes, needs.compute_bytes
    numbers = {"kv_cache_bytes": kv_bytes, "weights_bytes": weights, "compute_bytes": compute,
               "n_ctx": needs.cells.n_ctx}
    if not devices:
        return FitEstimate(0, 0, total, 0, needs.total_bytes, [], devices=[], **numbers)
    try:
        memory = _xllamacpp_memory()
        with _reading_header(memory, info, attention):
            # Projectors embedded in the GGUF are ignored, as the seed says.
            est = memory.estimate_gpu_layers(devices, str(info.path), [], n_ctx, DEFAULT_BATCH,
                                             n_parallel, cache_type)
    except Exception as exc:  # the seed: fall back to all layers
        log.warning("auto-NGL estimate failed (%s: %s); offloading all layers", type(exc).__name__, exc)
        return FitEstimate(ALL_LAYERS, total, total, 0, needs.total_bytes, [], devices=devices,
                           fallback=f"{type(exc).__name__}: {exc}", **numbers)
    layers = min(est.layers, total)
    split = [round(f * est.layers) for f in est.tensor_split] if est.layers else [0] * len(devices)
    # each GPU: its share of the layers' weights and KV cache, and the compute buffers where it has layers
    held = [int(n / total * (weights + kv_bytes)) + (compute if n else 0) for n in split]
    return FitEstimate(layers, layers, total, est.vram_size, est.total_size, list(est.gpu_sizes),
                       devices=devices, tensor_split=split, device_bytes=held, **numbers)


def auto_ngl(model_path: str, hw: HardwareProfile, n_ctx: int, n_parallel: int = 1,
             cache_type: str = "f16") -> FitEstimate:
    try:
        info = gguf_info.read(model_path)
    except gguf_info.GGUFError as exc:
        total = 0
        return FitEstimate(ALL_LAYERS if hw.llamacpp_gpus() else 0, total, total,
                           devices=llamacpp_device_dicts(hw), fallback=exc.problem)
    return estimate(info, hw, n_ctx, n_parallel, cache_type)


# -- what actually loaded, from the engine's log -------------------------------------------------

_PATTERNS = {
    "offloaded": re.compile(r"offloaded (\d+)/(\d+) layers to GPU"),
    "model_buffer": re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB"),
    "kv_size": re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB"),
    "kv_buffer": re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([\d.]+) MiB"),
    "compute_buffer": re.compile(r"(\S+) compute buffer size =\s+([\d.]+) MiB"),
    "n_ctx": re.compile(r"llama_context: n_ctx\s+= (\d+)"),
    "n_ctx_slot": re.compile(r"n_slots = (\d+), n_ctx_slot = (\d+)"),
    "n_ctx_train": re.compile(r"n_ctx_train\s+= (\d+)"),
}


@dataclass
class LoadedReport:
    """What the engine says it did, read from its log after start-up."""

    n_ctx: int | None = None
    n_ctx_train: int | None = None
    n_slots: int | None = None
    n_ctx_slot: int | None = None
    gpu_layers: int | None = None
    total_layers: int | None = None
    model_buffers_mib: dict[str, float] = field(default_factory=dict)
    kv_cache_mib: float = 0.0
    compute_buffers_mib: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        parts = []
        if self.gpu_layers is not None:
            parts.append(f"{self.gpu_layers}/{self.total_layers} layers on GPU")
        elif self.model_buffers_mib and all(not k.upper().startswith(("CUDA", "METAL", "MTL", "VULKAN", "ROCM"))
                                            for k in self.model_buffers_mib):
            parts.append("all layers on CPU")
        if self.model_buffers_mib:
            parts.append("weights " + ", ".join(f"{k} {units.size(v * units.MIB)}"
                                                for k, v in self.model_buffers_mib.items()))
        if self.kv_cache_mib:
            parts.append(f"KV cache {units.size(self.kv_cache_mib * units.MIB)}")
        if self.n_ctx:
            slot = f" ({self.n_slots} slots of {self.n_ctx_slot})" if self.n_slots else ""
            parts.append(f"context {self.n_ctx:,}{slot}")
        return "; ".join(parts)


def parse_loaded(lines: list[str]) -> LoadedReport:
    r = LoadedReport()
    for line in lines:
        if m := _PATTERNS["offloaded"].search(line):
            r.gpu_layers, r.total_layers = int(m[1]), int(m[2])
        elif m := _PATTERNS["model_buffer"].search(line):
            r.model_buffers_mib[m[1]] = r.model_buffers_mib.get(m[1], 0.0) + float(m[2])
        elif m := _PATTERNS["kv_size"].search(line):
            r.kv_cache_mib += float(m[1])
        elif m := _PATTERNS["compute_buffer"].search(line):
            r.compute_buffers_mib[m[1]] = float(m[2])
        elif m := _PATTERNS["n_ctx"].search(line):
            r.n_ctx = int(m[1])
        elif m := _PATTERNS["n_ctx_slot"].search(line):
            r.n_slots, r.n_ctx_slot = int(m[1]), int(m[2])
        elif m := _PATTERNS["n_ctx_train"].search(line):
            r.n_ctx_train = int(m[1])
    return r
