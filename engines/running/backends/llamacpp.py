"""llama.cpp through xllamacpp: parameters, auto-NGL, and the worker command."""
from __future__ import annotations

import json

from engines.machine import fit
from engines.running import params as P
from engines.machine.hardware import HardwareProfile
from engines.models.store import ModelSpec
from engines.running.supervisor import Command, worker_argv

NAME = "llamacpp"
DEFAULT_CTX = 4096


def schema() -> dict[str, P.ParamSpec]:
    return P.llamacpp_schema()


def validate(pairs) -> dict[str, object]:
    return P.validate(pairs, schema())


def prepare(spec: ModelSpec, hw: HardwareProfile, values: dict[str, object]
            ) -> tuple[dict[str, object], fit.FitEstimate | None, list[str]]:
    """Ember's defaults on top of the user's values, and auto-NGL when layers are not given."""
    out = dict(values)
    warnings: list[str] = []
    trained = spec.context_length or DEFAULT_CTX
    out.setdefault("n_ctx", min(DEFAULT_CTX, trained))
    out.setdefault("n_parallel", 1)
    # Ember estimates layers itself (the seed's auto-NGL); llama.cpp's own fitting would
    # cost ~0.8 s per start and may silently shrink n_ctx. Users can turn it back on.
    out.setdefault("fit_params", False)
    # Level 4 logs the buffer sizes, effective context and offloaded layers that
    # `loaded()` reports after start-up; it adds no per-token lines.
    out.setdefault("verbosity", 4)
    n_ctx = int(out["n_ctx"]) or trained
    if n_ctx > trained:
        warnings.append(f"n_ctx {n_ctx:,} is larger than the context the model was trained on ({trained:,}); "
                        "answers past that length may degrade")
    estimate = None
    if int(out.get("n_gpu_layers", -1)) < 0:
        estimate = fit.auto_ngl(spec.path, hw, n_ctx, int(out["n_parallel"]), str(out.get("cache_type_k", "f16")))
        out["n_gpu_layers"] = estimate.n_gpu_layers
        if len(estimate.devices) > 1 and sum(estimate.tensor_split) and "tensor_split" not in values:
            out["tensor_split"] = [float(n) for n in estimate.tensor_split]  # Ollama passes its split too
        if estimate.fallback and estimate.devices:
            warnings.append(f"auto-NGL could not estimate ({estimate.fallback}); offloading all layers")
        memory = hw.ram_total_bytes + sum(g.memory_total_bytes or 0 for g in hw.llamacpp_gpus())
        if memory and estimate.total_bytes > memory:  # it would fail at start-up (see engines.diagnosis.diagnose)
            warnings.append(f"n_ctx {n_ctx:,} needs about {estimate.total_bytes / 1024 ** 3:,.1f} GiB "
                            f"(KV cache {estimate.kv_cache_bytes / 1024 ** 3:,.1f} GiB), more than this computer "
                            f"has ({memory / 1024 ** 3:,.1f} GiB); lower n_ctx")
    return out, estimate, warnings


def loaded(lines: list[str]) -> fit.LoadedReport:
    """What llama.cpp actually did at start-up, from its log."""
    return fit.parse_loaded(lines)


def command(spec: ModelSpec, values: dict[str, object], host: str, port: int, api_key: str) -> Command:
    config = {"model_path": spec.path, "params": values, "host": host, "port": port, "api_key": api_key}
    redacted = dict(config, api_key="***")
    return Command(argv=worker_argv("llamacpp"), stdin_line=json.dumps(config),
                   display=" ".join(worker_argv("llamacpp")) + " " + json.dumps(redacted))
