"""Which engine runs a model on a machine: the seed's rules, with reasons.

The rules are Xinference's (``shared/seed/backends.rst``):
GGUF -> llama.cpp; MLX format on Apple silicon -> MLX; vLLM when the format and
quantization, Linux with a CUDA device and the architecture all allow it;
otherwise PyTorch format -> transformers; SGLang only when asked for.
Every engine not chosen gets the reason in words.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources

from engines.running.backends import ENGINES, LABELS
from engines.machine.hardware import HardwareProfile
from engines.models.store import ModelSpec

VLLM_QUANTIZATIONS = {"pytorch": {"none"}, "awq": {"int4"}, "gptq": {"int3", "int4", "int8"}}


@functools.lru_cache(maxsize=1)
def vllm_architectures() -> frozenset[str]:
    text = resources.files("resources").joinpath("vllm_architectures.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@dataclass
class Selection:
    engine: str | None                      # the engine that will run it, None if none can
    reasons: dict[str, str] = field(default_factory=dict)  # engine -> why not (or why, for the chosen)
    eligible: list[str] = field(default_factory=list)      # engines whose conditions hold, best first
    warning: str | None = None

    @property
    def reason(self) -> str:
        if self.engine:
            return self.reasons.get(self.engine, "")
        return "; ".join(f"{LABELS[e]}: {r}" for e, r in self.reasons.items())


def _vllm_reason(spec: ModelSpec, hw: HardwareProfile) -> str | None:
    """None when vLLM's conditions hold, else why not."""
    quants = VLLM_QUANTIZATIONS.get(spec.format)
    if quants is None:
        return f"vLLM runs PyTorch, AWQ or GPTQ models; this one is {spec.format.upper()}"
    if spec.quantization.lower() not in quants:
        allowed = {"pytorch": "unquantized (none)", "awq": "Int4", "gptq": "Int3, Int4 or Int8"}[spec.format]
        return f"vLLM takes {spec.format} models only {allowed}, not {spec.quantization}"
    if hw.os != "linux":
        return f"vLLM needs Linux; this is {hw.os}"
    if not hw.has_cuda:
        return "vLLM needs an NVIDIA GPU with CUDA; none was found"
    if spec.architecture not in vllm_architectures():
        return f"{spec.architecture or 'this architecture'} is not in the list of models Ember runs with vLLM"
    return None


def _sglang_reason(spec: ModelSpec, hw: HardwareProfile) -> str | None:
    if spec.format not in ("pytorch", "awq", "gptq"):
        return f"SGLang runs PyTorch, AWQ or GPTQ models; this one is {spec.format.upper()}"
    if hw.os != "linux":
        return f"SGLang needs Linux; this is {hw.os}"
    if not hw.has_cuda:
        return "SGLang needs an NVIDIA GPU with CUDA; none was found"
    return None


def conditions(spec: ModelSpec, hw: HardwareProfile) -> dict[str, str | None]:
    """For each engine, None when the seed's conditions hold, else the reason."""
    fmt = spec.format
    out: dict[str, str | None] = {}
    out["llamacpp"] = None if fmt == "gguf" else f"llama.cpp runs GGUF files; this model is {fmt.upper()}"
    if fmt != "mlx":
        out["mlx"] = f"MLX runs MLX-format models; this one is {fmt.upper()}"
    elif not hw.is_mac_arm:
        out["mlx"] = f"MLX is chosen on Apple silicon Macs; this is {hw.os} {hw.arch} (ask for it to run on the CPU, slowly)"
    else:
        out["mlx"] = None
    out["vllm"] = _vllm_reason(spec, hw)
    if fmt == "pytorch":
        out["transformers"] = None
    elif fmt in ("awq", "gptq"):
        out["transformers"] = None if hw.has_cuda else \
            f"Transformers needs an NVIDIA GPU for {fmt.upper()} models; none was found"
    else:
        out["transformers"] = f"Transformers runs PyTorch-format models; this one is {fmt.upper()}"
    out["sglang"] = _sglang_reason(spec, hw)
    return out


def _may_force(engine: str, spec: ModelSpec, hw: HardwareProfile, why_not: str | None) -> bool:
    """Engines a user may ask for although the seed would not choose them."""
    if why_not is None:
        return True
    if engine == "mlx" and spec.format in ("mlx", "pytorch"):
        return True  # mlx_lm loads safetensors folders too; its CPU build runs anywhere, slowly
    return False


def select(spec: ModelSpec, hw: HardwareProfile, requested: str | None = None,
           installed: dict[str, bool] | None = None) -> Selection:
    """Pick the engine for ``spec`` on ``hw``.

    ``installed`` maps engine -> installed here; None means judge by the rules
    alone (e.g. for another machine's profile).
    """
    if requested is not None and requested not in ENGINES:
        raise ValueError(f"unknown engine {requested!r}; choose one of {', '.join(ENGINES)}")
    why = conditions(spec, hw)
    order = ["llamacpp", "mlx", "vllm", "transformers"]  # the seed's precedence; SGLang only on request
    eligible = [e for e in order if why[e] is None]
    if why["sglang"] is None:
        eligible.append("sglang")
    reasons: dict[str, str] = {e: r for e, r in why.items() if r is not None}

    def usable(e: str) -> bool:
        return installed is None or installed.get(e, False)

    if requested:
        if not _may_force(requested, spec, hw, why[requested]):
            return Selection(None, reasons, eligible)
        if not usable(requested):
            reasons[requested] = f"{LABELS[requested]} is not installed"
            return Selection(None, reasons, eligible)
        warning = None
        if why[requested] is not None:
            warning = f"{LABELS[requested]} is not the usual engine here ({why[requested]})"
            if requested == "mlx" and not hw.is_mac_arm:
                warning = "MLX runs on the CPU here, slowly: it is built for Apple silicon"
        reasons[requested] = "you asked for it"
        return Selection(requested, reasons, eligible, warning)

    chosen = None
    for e in [e for e in eligible if e != "sglang"]:
        if usable(e):
            chosen = e
            break
        reasons[e] = f"{LABELS[e]} would run it but is not installed"
    if chosen:
        reasons[chosen] = {
            "llamacpp": "GGUF models run on llama.cpp",
            "mlx": "MLX-format model on Apple silicon",
            "vllm": "vLLM supports this model on Linux with CUDA",
            "transformers": "Transformers is the default engine for PyTorch-format models",
        }[chosen]
        if "sglang" in eligible and "sglang" not in reasons:
            reasons["sglang"] = "SGLang can run it too, when you ask for it"
        for e in eligible:
            if e not in reasons:
                reasons[e] = f"{LABELS[chosen]} comes first by the rules; you can choose {LABELS[e]} instead"
    return Selection(chosen, reasons, eligible)
