"""vLLM through its own OpenAI-compatible server (``vllm serve``).

vLLM pins its own torch and CUDA, so it usually lives in an environment of its
own (setting ``engine_python.vllm``); it is started as
``<python> -m vllm.entrypoints.openai.api_server`` under our worker. The API key
goes through ``VLLM_API_KEY`` in the environment, not the command line. vLLM
opens its port only when the engine is ready, so ``/health`` answering 200 is
readiness.

Parameters are vLLM's own engine arguments in snake case (``max_model_len``,
``gpu_memory_utilization``, ``tensor_parallel_size``...): the common ones below
are documented and range-checked here, and when the vLLM interpreter can be
asked (:func:`introspect`) every other ``EngineArgs`` field is accepted too.
"""
from __future__ import annotations

import functools
import logging
import re
from typing import Mapping

from engines import units
from engines.diagnosis.types import Fix, Kind, log_table
from engines.models.store import ModelSpec
from engines.running.backends import _server as S
from engines.running.backends.base import PlanView, Roles, plan_param
from engines.running.backends.installed import LABELS
from engines.running.supervisor import Command

log = logging.getLogger(__name__)

NAME = "vllm"

COMMON: dict[str, S.Arg] = {a.spec.key: a for a in (
    S.arg("max_model_len", "int", None, check=S.at_least(16),
          help="context length in tokens; the KV cache must hold at least one sequence this long"),
    S.arg("gpu_memory_utilization", "float", 0.9, check=S.between(0.01, 1.0),
          help="fraction of each GPU's memory vLLM may take (weights + KV cache)"),
    S.arg("tensor_parallel_size", "int", 1, check=S.at_least(1), help="split the model over this many GPUs"),
    S.arg("pipeline_parallel_size", "int", 1, check=S.at_least(1)),
    S.arg("max_num_seqs", "int", 256, check=S.at_least(1), help="requests batched together at most"),
    S.arg("max_num_batched_tokens", "int", None, check=S.at_least(1)),
    S.arg("dtype", "enum", "auto", choices=("auto", "half", "float16", "bfloat16", "float", "float32")),
    S.arg("quantization", "str", None, help="awq, gptq, fp8, ... (usually read from the model)"),
    S.arg("kv_cache_dtype", "enum", "auto", choices=("auto", "fp8", "fp8_e4m3", "fp8_e5m2")),
    S.arg("enforce_eager", "bool", False, store_true=True, help="no CUDA graphs: less memory, slower"),
    S.arg("enable_prefix_caching", "bool", None, store_true=True),
    S.arg("swap_space", "float", None, check=S.between(0, 1024), help="CPU swap space per GPU, GiB"),
    S.arg("seed", "int", None),
    S.arg("chat_template", "str", None, help="a Jinja chat template file, for models that have none"),
    S.arg("trust_remote_code", "bool", False, store_true=True),
)}

#: its own log lines, most specific first.
LOG_PATTERNS = log_table(
    (r"To serve at least one request with the models?'s max seq len \((?P<max_model_len>\d+)\), "
     r"\((?P<needed_gib>[\d.]+) GiB KV cache is needed, which is larger than the available KV cache memory "
     r"\((?P<available_gib>[\d.]+) GiB\)(?:\. Based on the available memory, the estimated maximum model length "
     r"is (?P<estimated_max_len>\d+))?", "oom_load", {"memory": "gpu", "cause": "max_model_len"}),
    (r"The model's max seq len \((?P<max_model_len>\d+)\) is larger than the maximum number of tokens that can "
     r"be stored in KV cache \((?P<kv_tokens>\d+)\)", "oom_load", {"memory": "gpu", "cause": "max_model_len"}),
    (r"No available memory for the cache blocks", "oom_load", {"memory": "gpu", "cause": "kv_cache"}),
    (r"Free memory on device \((?P<free_gib>[\d.]+)/(?P<total_gib>[\d.]+) GiB\) on startup is less than desired "
     r"GPU memory utilization \((?P<gpu_memory_utilization>[\d.]+), (?P<wanted_gib>[\d.]+) GiB\)",
     "oom_load", {"memory": "gpu", "cause": "gpu_busy"}),
    # a request longer than max_model_len (the answer's tokens count too)
    (r"maximum context length is (?P<n_ctx_slot>\d+) tokens\. However, you requested \d+ tokens "
     r"\((?P<n_prompt_tokens>\d+) in the messages, (?P<max_tokens>\d+) in the completion\)", "context_exceeded"),
    (r"maximum context length is (?P<n_ctx_slot>\d+) tokens\. However, you requested (?P<n_prompt_tokens>\d+) tokens",
     "context_exceeded"),
    (r"Input prompt \((?P<n_prompt_tokens>\d+) tokens\) is too long and exceeds limit of (?P<n_ctx_slot>\d+)",
     "context_exceeded"),
    (r"The decoder prompt \(length (?P<n_prompt_tokens>\d+)\) is longer than the maximum model length of "
     r"(?P<n_ctx_slot>\d+)", "context_exceeded"),
    (r"The prompt \(total length (?P<n_prompt_tokens>\d+)\) is too long to fit into the model \(context length "
     r"(?P<n_ctx_slot>\d+)\)", "context_exceeded"),
    (r"Prompt length of (?P<n_prompt_tokens>\d+) is longer than the maximum model length of (?P<n_ctx_slot>\d+)",
     "context_exceeded"),
    (r"Failed to infer device type", "gpu_unusable", {"problem": "no_device"}),
    (r"Total number of attention heads \((?P<heads>\d+)\) must be divisible by tensor parallel size "
     r"\((?P<tensor_parallel_size>\d+)\)", "bad_parameter", {"parameter": "tensor_parallel_size"}),
    (r"GPUs with compute capability below (?P<min_capability>[\d.]+) are not supported", "gpu_unusable",
     {"problem": "gpu_too_old"}),
    (r"Bfloat16 is only supported on GPUs with compute capability of at least 8\.0", "bad_parameter",
     {"parameter": "dtype"}),
    (r"Model architectures \[(?P<architecture>[^\]]*)\] are not supported", "invalid_model",
     {"problem": "unknown_architecture"}),
    (r"No module named '?vllm'?", "startup_failed", {"problem": "engine_missing"}),
) + S.TORCH_PATTERNS + log_table(
    (r"Engine core initialization failed|EngineCore failed to start", "startup_failed"),
)

#: Lines only vLLM writes; what it writes while loading, and once it serves.
SIGNATURE = re.compile(r"\bvllm\b|vLLM|EngineCore|VllmWorker|serving_chat\.py|GPU blocks:|Memory profiling results|"
                       r"Loading model weights took|Maximum concurrency for|max seq len|gpu_memory_utilization|"
                       r"Avg prompt throughput|Input prompt \(\d+ tokens\) is too long", re.IGNORECASE)
LOADING = re.compile(r"Loading model weights|Loading safetensors checkpoint shards|Memory profiling|GPU blocks|"
                     r"Maximum concurrency|init_engine|EngineCore|initialize_cache|determine_num_available_blocks|"
                     r"Starting to load model|load_model|Capturing (?:the model for )?CUDA graphs")
SERVING = re.compile(r"Application startup complete|Uvicorn running on|Avg prompt throughput|Received request|"
                     r"Added request|serving_chat\.py|" + S.HTTP_SERVING)

#: which parameters fix each cause (keys the engine's validate accepts); the values come from its fixes_for.
FIXES = {
    "max_model_len": ["max_model_len", "gpu_memory_utilization", "tensor_parallel_size"],
    "kv_cache": ["gpu_memory_utilization", "max_model_len", "tensor_parallel_size"],
    "gpu_busy": ["gpu_memory_utilization"],
    "gpu": ["max_model_len", "enforce_eager", "tensor_parallel_size"],
}


@functools.lru_cache(maxsize=8)
def introspect(python: str, version: str = "") -> dict[str, S.Arg]:
    """vLLM's ``EngineArgs`` fields, read by the vLLM interpreter (cached: importing vLLM is slow)."""
    # vLLM's bool arguments are BooleanOptionalAction: --flag / --no-flag
    return S.introspect_dataclass(python, version, "vllm.engine.arg_utils", "EngineArgs", "vllm-engine-args",
                                  skip=("model", "served_model_name", "tokenizer"), negatable=True)


def table() -> dict[str, S.Arg]:
    """The documented arguments, plus every ``EngineArgs`` field of the vLLM that would run."""
    return S.full_table(NAME, COMMON, introspect)


class VLLM(S.GPUServerEngine):
    name = NAME
    label = LABELS[NAME]
    roles = Roles(context="max_model_len", parallel="max_num_seqs")
    log_patterns = LOG_PATTERNS
    log_signature = SIGNATURE
    loading_lines = LOADING
    serving_lines = SERVING
    gpu_install = "pip install --upgrade vllm   (its wheels carry the CUDA they need; in vLLM's own environment)"
    tensor_parallel = "tensor_parallel_size"
    past_training = "vLLM refuses that unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"

    def table(self) -> dict[str, S.Arg]:
        return table()

    def command(self, spec: ModelSpec, values: dict[str, object], host: str, port: int, api_key: str) -> Command:
        python = S.interpreter(NAME)
        program = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(spec.path),
                   "--served-model-name", spec.name, "--host", host, "--port", str(port),
                   *S.flags(values, table())]
        env = {"VLLM_API_KEY": api_key, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        return S.exec_command(NAME, program, env, health_path="/health")

    def fixes_for(self, kind: Kind, facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
        """Concrete parameter changes for a diagnosis of this engine, best first."""
        if kind == Kind.CONTEXT_EXCEEDED:
            return S.longer_context(facts, plan, "max_model_len")
        if kind != Kind.OOM_LOAD:
            return []
        if facts.get("cause") == "gpu_busy":
            return _busy_gpu_fixes(facts, float(plan_param(plan, "gpu_memory_utilization", 0.9)))
        return _memory_fixes(facts, plan)


def _busy_gpu_fixes(facts: Mapping[str, object], util: float) -> list[Fix]:
    """Other programs hold part of the GPU: ask for what is free."""
    free, total = float(facts.get("free_gib", 0) or 0), float(facts.get("total_gib", 0) or 0)
    new = round(free / total - 0.03, 2) if free and total else round(util - 0.2, 2)
    if new < 0.05:
        return []
    return [Fix(f"Let vLLM use less of the GPU ({new:.0%})", {"gpu_memory_utilization": new},
                "Other programs hold part of the GPU's memory.")]


def _memory_fixes(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    cause = facts.get("cause") or "gpu"
    length = int(plan_param(plan, "max_model_len", facts.get("max_model_len") or units.DEFAULT_N_CTX))
    util = float(plan_param(plan, "gpu_memory_utilization", 0.9))
    tp = int(plan_param(plan, "tensor_parallel_size", 1))
    out = []
    fit_len = facts.get("estimated_max_len") or facts.get("kv_tokens")
    new_len = S.round_len(int(fit_len)) if fit_len else S.round_len(length // 2)
    if new_len < length:
        out.append(Fix(f"Lower the context to {new_len:,} tokens", {"max_model_len": new_len},
                       "A shorter context needs a smaller KV cache."))
    if util < 0.95:
        new_util = round(min(0.95, util + 0.05), 2)
        out.append(Fix(f"Let vLLM use more of the GPU ({new_util:.0%})", {"gpu_memory_utilization": new_util},
                       "More memory for the KV cache, if nothing else uses the GPU."))
    if cause == "gpu" and not plan_param(plan, "enforce_eager", False):
        out.append(Fix("Turn off CUDA graphs", {"enforce_eager": True}, "Saves memory; answers come slower."))
    if S.cuda_gpus(plan) >= tp * 2:
        out.append(Fix(f"Split the model over {tp * 2} GPUs", {"tensor_parallel_size": tp * 2},
                       "Tensor parallelism spreads weights and KV cache over several GPUs."))
    return out


ENGINE = VLLM()
