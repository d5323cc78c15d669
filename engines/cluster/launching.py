"""Launching on a cluster: Ember's engine choice and parameters as Xinference's launch, and what fits there.

The engine is the one Ember's rules pick (:mod:`engines.running.selection`, judged
against the cluster's devices, not this computer's), named as Xinference names it
(:data:`XINFERENCE_ENGINES`). Parameters are the engine's own keys, validated the
way a local launch validates them; Xinference passes its engines' options through
under the same names (llama.cpp's ``n_ctx``, ``n_parallel``, ``sampling.top_k``;
vLLM's ``max_model_len``), while replicas and GPU count are Xinference's own fields.

A model of Ember's (a GGUF on this computer) is registered on the cluster first
under ``ember-NAME``; the cluster must be able to read the file at the same path
(the same machine, or a shared folder). It runs under the uid ``NAME``, so the
gateway lists it as ``CLUSTER/NAME`` and ``ember chat NAME --on CLUSTER`` finds it.
"""
from __future__ import annotations

import logging
import math
import re
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from engines import settings, units
from engines.cluster.xinference import Client, ClusterError, ClusterInfo, Failure, Launch, LaunchState, RunningModel
from engines.machine import fit
from engines.machine.hardware import GPU, HardwareProfile
from engines.models import lookup, store
from engines.models.store import ModelSpec
from engines.running import backends, selection
from engines.running.backends import LABELS

log = logging.getLogger(__name__)

#: Ember's engine keys → Xinference's ``model_engine`` names.
XINFERENCE_ENGINES = {"llamacpp": "llama.cpp", "vllm": "vLLM", "sglang": "SGLang", "transformers": "Transformers",
                      "mlx": "MLX"}
EMBER_ENGINES = {v: k for k, v in XINFERENCE_ENGINES.items()}
#: Ember's precedence when Xinference offers several engines for a built-in model (SGLang only when asked).
PRECEDENCE = ("llamacpp", "mlx", "vllm", "transformers")
#: A GGUF's architecture → the built-in Xinference family whose chat template it takes (required to register).
FAMILIES = {"gemma3": "gemma-3-1b-it", "gemma2": "gemma-2-it", "llama": "llama-3.1-instruct",
            "qwen2": "qwen2.5-instruct", "qwen3": "Qwen3-Instruct", "mistral": "mistral-instruct-v0.3",
            "phi3": "phi-3-mini-128k-instruct"}
XINFERENCE_FORMATS = {"gguf": "ggufv2", "pytorch": "pytorch", "awq": "awq", "gptq": "gptq", "mlx": "mlx"}


@dataclass
class ClusterPlan:
    """One launch on a cluster; reads like a local :class:`~engines.running.launch.LaunchPlan` to the diagnosis."""

    cluster: str
    uid: str                       # the running model's name there (and in the gateway: CLUSTER/uid)
    model_name: str                # Xinference's model name (built-in, or ember-NAME once registered)
    engine: str                    # Ember's engine key
    params: dict[str, object]      # the engine's own keys, as sent
    user_params: dict[str, object]
    model: ModelSpec | None = None  # Ember's model when it is one of this computer's
    hardware: HardwareProfile = field(default_factory=lambda: unknown_machine())  # the largest worker, if told
    replicas: int = 1
    n_gpu: int | str | None = "auto"
    fit: fit.FitEstimate | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def xinference_engine(self) -> str:
        return XINFERENCE_ENGINES[self.engine]

    def launch_request(self) -> Launch:
        return Launch(self.uid, self.model_name, self.xinference_engine, dict(self.params), self.replicas, self.n_gpu)

    def with_changes(self, changes: dict[str, object]) -> "ClusterPlan":
        """The same launch with some parameters changed (a diagnosis fix, relaunched on the cluster)."""
        user = {**self.user_params, **changes}
        chosen = backends.get(self.engine)
        values = {**self.params, **chosen.validate({k: v for k, v in changes.items()})}
        return replace(self, params=values, user_params=user)


class ClusterPlanError(ValueError):
    """The model cannot be launched on that cluster as asked; ``message`` says why and what to do."""

    def __init__(self, cluster: str, model: str, problem: str):
        self.cluster, self.model, self.problem = cluster, model, problem
        super().__init__(f"{model} on {cluster}: {problem}")

    @property
    def message(self) -> str:
        return str(self)


# -- the cluster as a machine ------------------------------------------------------------------------

def profile(info: ClusterInfo | None) -> HardwareProfile | None:
    """The cluster's largest worker as a hardware profile (fit is judged per worker); None when not told.

    Xinference reports GPU count and memory, not names or vendors: its GPUs are CUDA devices."""
    if info is None or not info.workers:
        return None
    w = max(info.workers, key=lambda w: ((w.gpus.vram_total_bytes if w.gpus else 0), w.memory_total_bytes or 0))
    gpus = []
    if w.gpus and w.gpus.gpu_count:
        n = w.gpus.gpu_count
        gpus = [GPU(f"GPU {i} on {w.address}", "nvidia", "cuda", w.gpus.vram_total_bytes // n,
                    w.gpus.vram_free_bytes // n, f"CUDA{i}") for i in range(n)]
    return HardwareProfile("linux", "x86_64", w.cpu_count or 1, w.memory_total_bytes or 0,
                           w.memory_free_bytes or w.memory_total_bytes or 0, gpus, f"worker {w.address}",
                           llamacpp_build="cuda" if gpus else "cpu")


def fit_on(hw: HardwareProfile | None, spec: ModelSpec | None, n_ctx: int | None = None) -> tuple[str, str]:
    """(badge, words) for a model on the cluster: gpu / partial / cpu / none, or unknown (never this computer's)."""
    if hw is None:
        return "unknown", "the cluster does not tell its devices to these credentials"
    if spec is None or spec.format != "gguf" or not spec.is_local:
        return "unknown", "Ember cannot size this model (it reads GGUF files it has)"
    n_ctx = n_ctx or default_context(spec)
    est = fit.auto_ngl(spec.path, hw, n_ctx)
    memory = hw.ram_total_bytes + sum(g.memory_total_bytes for g in hw.gpus)
    if est.total_bytes and memory and est.total_bytes > memory:
        return "none", f"needs about {units.gib(est.total_bytes)}; the largest worker has {units.gib(memory)}"
    where = f"{est.gpu_layers} of {est.total_layers} layers on the worker's GPUs \u00b7 " if est.fit == "partial" else ""
    return est.fit, f"{where}context {n_ctx:,} \u00b7 about {units.gib(est.total_bytes)} on {hw.cpu_name or 'a worker'}"


def default_context(spec: ModelSpec | None) -> int:
    """Ember's default context (the setting), never past what the model was trained for."""
    n_ctx = int(settings.get("default_n_ctx") or units.DEFAULT_N_CTX)
    trained = spec.context_length if spec is not None else None
    return min(n_ctx, trained) if trained else n_ctx


def reaches_files(cluster_url: str) -> bool:
    """Whether the cluster can read this computer's model files at their paths: it runs on this computer.

    (A cluster elsewhere may share the folder; Ember cannot tell, so it offers them only here.)"""
    host = urlsplit(cluster_url).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    try:
        mine = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
        theirs = {a[4][0] for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(mine & theirs)


# -- planning ----------------------------------------------------------------------------------------

def registered_name(spec: ModelSpec) -> str:
    """The name Ember registers one of its models under (Xinference wants a plain name)."""
    return "ember-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.name).strip("-").lower()


def uid_for(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def local_spec(model: str) -> ModelSpec | None:
    try:
        spec = lookup.resolve(model)
    except (LookupError, store.ModelError, ValueError):
        return None
    return spec if spec.is_local else None


def plan(cluster: str, model: str, client: Client | None = None, info: ClusterInfo | None = None,
         engine: str | None = None, overrides: dict[str, object] | list[str] | None = None, replicas: int = 1,
         n_gpu: int | str | None = "auto", uid: str | None = None, base: dict | None = None,
         context: int | None = None) -> ClusterPlan:
    """The launch of ``model`` (one of Ember's local models, or an Xinference name) on ``cluster``.

    ``base``: parameters of an earlier launch that ``overrides`` change (a fix keeps the rest).
    ``context``: a context size for whichever engine is chosen (its own key), as the desktop asks it.
    Raises ClusterPlanError, ParamError (a bad ``--set``), ClusterError (the cluster's answers)."""
    if replicas < 1:
        raise ClusterPlanError(cluster, model, "replicas must be 1 or more")
    spec = local_spec(model)
    hw = profile(info)
    warnings: list[str] = []
    if spec is not None:
        sel = selection.select(spec, hw or unknown_machine(), engine, installed=None)
        if sel.engine is None:
            raise ClusterPlanError(cluster, model, sel.reason or "no engine can run it")
        if sel.engine != "llamacpp":
            raise ClusterPlanError(cluster, model, f"{LABELS[sel.engine]} models of this computer cannot be "
                                                   "registered on a cluster yet; Ember registers GGUF files")
        if sel.warning:
            warnings.append(sel.warning)
        chosen, model_name, trained = sel.engine, registered_name(spec), spec.context_length
    else:
        if client is None:
            raise ClusterPlanError(cluster, model, "not a model of this computer, and the cluster was not asked")
        offered = {EMBER_ENGINES[e] for e in client.engines_for(model) if e in EMBER_ENGINES}
        if not offered:
            raise ClusterPlanError(cluster, model, "the cluster knows no model of that name (`ember cluster models "
                                                   f"{cluster}` lists what it can launch)")
        if engine is not None and engine not in offered:
            raise ClusterPlanError(cluster, model, f"the cluster cannot run it with {LABELS.get(engine, engine)}; "
                                                   f"it offers {', '.join(LABELS[e] for e in sorted(offered))}")
        chosen = engine or next((e for e in PRECEDENCE if e in offered), None) or sorted(offered)[0]
        model_name, trained = model, None
    backend = backends.get(chosen)
    user = {**backend.validate(base or {}), **backend.validate(overrides or {})}
    values = dict(user)
    ctx_key = backend.roles.context
    if context and ctx_key and ctx_key not in (overrides or {}):  # the panel's Context field, in this engine's key
        values[ctx_key] = user[ctx_key] = backend.validate({ctx_key: context})[ctx_key]
    if ctx_key and ctx_key not in values:
        values[ctx_key] = min(default_context(spec), trained) if trained else default_context(spec)
    if backend.roles.parallel and backend.roles.parallel not in values and chosen == "llamacpp":
        values[backend.roles.parallel] = 1  # Ember's default, as locally (Xinference would take min(8, cores))
    est = None
    if spec is not None and hw is not None and chosen == "llamacpp":
        est = fit.auto_ngl(spec.path, hw, int(values.get(ctx_key) or default_context(spec)),
                           int(values.get("n_parallel") or 1))
    return ClusterPlan(cluster, uid or uid_for(spec.name if spec else model), model_name, chosen, values, user,
                       spec, hw or unknown_machine(), replicas, n_gpu, est, warnings)


def unknown_machine() -> HardwareProfile:
    """A cluster that does not tell its devices: judged by the rules alone, with no GPU assumed."""
    return HardwareProfile("linux", "x86_64", 1, 0, 0, [], "unknown", llamacpp_build="unknown")


# -- registering Ember's models -----------------------------------------------------------------------

def registration_spec(spec: ModelSpec, name: str | None = None) -> dict:
    """Xinference's version-2 spec for one of Ember's GGUF files (the folder is the URI, the file its template)."""
    family = FAMILIES.get((spec.gguf_architecture or "").lower())
    if family is None:
        raise ClusterPlanError("", spec.name, f"Ember does not know which Xinference family a "
                                              f"{spec.gguf_architecture or 'model of unknown architecture'} "
                                              "belongs to, so it cannot register it")
    path = Path(spec.path or "")
    billions = (spec.parameters or 0) / 1e9
    size = f"{billions:.2f}".rstrip("0").rstrip(".").replace(".", "_") if billions < 1 else str(math.ceil(billions))
    return {"version": 2, "context_length": spec.context_length or units.DEFAULT_N_CTX,
            "model_name": name or registered_name(spec), "model_lang": ["en"], "model_ability": ["chat"],
            "model_family": family,
            "model_description": f"{spec.display_name or spec.name}, registered by Ember",
            "model_specs": [{"model_format": XINFERENCE_FORMATS.get(spec.format, spec.format),
                             "model_size_in_billions": size or "1", "quantization": spec.quantization or "none",
                             "model_uri": path.parent.absolute().as_uri(),
                             "model_file_name_template": path.name}]}


def ensure_registered(client: Client, p: ClusterPlan) -> bool:
    """Register the plan's local model on the cluster when it is not there yet; True when it registered now."""
    if p.model is None or client.registration(p.model_name) is not None:
        return False
    client.register(registration_spec(p.model, p.model_name))
    log.info("registered %s on %s as %s", p.model.name, p.cluster, p.model_name)
    return True


def start(client: Client, p: ClusterPlan, timeout: float = 600.0,
          on_progress: Callable[[LaunchState], None] | None = None,
          cancel: threading.Event | None = None) -> RunningModel:
    """Register when needed, launch, and wait until it answers (ClusterError with the cluster's words else)."""
    ensure_registered(client, p)
    uid = client.launch(p.launch_request())
    try:
        client.wait(uid, timeout, on_progress, cancel)
    except ClusterError as exc:
        if exc.kind in (Failure.LAUNCH_FAILED, Failure.CANCELLED, Failure.TIMEOUT):
            _quietly_terminate(client, uid)  # a failed launch keeps its ERROR entry (and a cancelled one its worker)
        raise
    found = next((m for m in client.running() if m.uid == uid), None)
    return found or RunningModel(uid, p.model_name, p.xinference_engine, _int(p.params.get("n_ctx")), p.replicas)


def relaunch(client: Client, p: ClusterPlan, **kw) -> RunningModel:
    """Stop the model's current launch (if any) and start ``p``: how a diagnosis fix is applied on a cluster."""
    client.terminate(p.uid)
    return start(client, p, **kw)


def _quietly_terminate(client: Client, uid: str) -> None:
    try:
        client.terminate(uid)
    except ClusterError as exc:
        log.info("could not clean up %s after a failed launch: %s", uid, exc)


def _int(v) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None
