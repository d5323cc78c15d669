"""llama.cpp through xllamacpp: parameters, auto-NGL, the worker command, and its diagnosis dialect."""
from __future__ import annotations

import json
from typing import Mapping

from engines import units
from engines.diagnosis.types import Fix, Kind
from engines.machine import fit
from engines.machine.hardware import HardwareProfile
from engines.models.store import ModelSpec
from engines.running import params as P
from engines.running.backends import llamacpp_diagnosis as dialect
from engines.running.backends.base import ContextShape, Engine, PlanView, Prepared, Roles
from engines.running.backends.installed import LABELS
from engines.running.supervisor import Command, worker_argv

NAME = "llamacpp"


class LlamaCpp(Engine):
    name = NAME
    label = LABELS[NAME]
    roles = Roles(context="n_ctx", parallel="n_parallel", gpu_layers="n_gpu_layers")
    log_patterns = dialect.LOG_PATTERNS
    log_signature = dialect.SIGNATURE
    loading_lines = dialect.LOADING
    serving_lines = dialect.SERVING
    gpu_install = dialect.CUDA_INSTALL

    def schema(self) -> dict[str, P.ParamSpec]:
        return P.llamacpp_schema()

    def validate(self, pairs) -> dict[str, object]:
        return P.validate(pairs, self.schema())

    def prepare(self, spec: ModelSpec, hw: HardwareProfile, values: dict[str, object]) -> Prepared:
        """Ember's defaults on top of the user's values, and auto-NGL when layers are not given."""
        out = dict(values)
        warnings: list[str] = []
        trained = spec.context_length or units.DEFAULT_N_CTX
        out.setdefault("n_ctx", min(units.DEFAULT_N_CTX, trained))
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
            warnings += _estimate_warnings(estimate, hw, n_ctx)
        return Prepared(out, estimate, warnings)

    def command(self, spec: ModelSpec, values: dict[str, object], host: str, port: int, api_key: str) -> Command:
        config = {"model_path": spec.path, "model_alias": spec.name, "params": values, "host": host, "port": port,
                  "api_key": api_key}
        redacted = dict(config, api_key="***")
        return Command(argv=worker_argv("llamacpp"), stdin_line=json.dumps(config),
                       display=" ".join(worker_argv("llamacpp")) + " " + json.dumps(redacted))

    def loaded(self, lines: list[str]) -> fit.LoadedReport:
        """What llama.cpp actually did at start-up, from its log."""
        return fit.parse_loaded(lines)

    def fixes_for(self, kind: Kind, facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
        return dialect.fixes_for(kind, facts, plan)

    def context(self, plan: PlanView | None) -> ContextShape:
        return dialect.context_shape(plan)

    def memory_estimate(self, plan: PlanView, context: int) -> fit.FitEstimate | None:
        return dialect.memory_estimate(plan, context)


def _estimate_warnings(estimate: fit.FitEstimate, hw: HardwareProfile, n_ctx: int) -> list[str]:
    warnings = []
    if estimate.fallback and estimate.devices:
        warnings.append(f"auto-NGL could not estimate ({estimate.fallback}); offloading all layers")
    memory = hw.ram_total_bytes + sum(g.memory_total_bytes or 0 for g in hw.llamacpp_gpus())
    if memory and estimate.total_bytes > memory:  # it would fail at start-up (see engines.diagnosis)
        warnings.append(f"n_ctx {n_ctx:,} needs about {units.gib(estimate.total_bytes)} "
                        f"(KV cache {units.gib(estimate.kv_cache_bytes)}), more than this computer "
                        f"has ({units.gib(memory)}); lower n_ctx")
    return warnings


ENGINE = LlamaCpp()
