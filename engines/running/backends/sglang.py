"""SGLang through its own OpenAI-compatible server (``python -m sglang.launch_server``).

Chosen only when asked for (the seed's rules). Like vLLM it usually lives in an
environment of its own (``engine_python.sglang``). SGLang takes its API key
only as ``--api-key`` (no environment variable), so the key is on the command
line of a loopback-only server and is masked in Ember's logs. ``/health``
answers 200 once the scheduler is up.

Parameters are SGLang's server arguments in snake case (``context_length``,
``mem_fraction_static``, ``tp_size``...); the common ones are documented here.
"""
from __future__ import annotations

import functools
import re
from typing import Mapping

from engines import units
from engines.diagnosis.types import Fix, Kind, log_table
from engines.models.store import ModelSpec
from engines.running.backends import _server as S
from engines.running.backends.base import PlanView, Roles, plan_param
from engines.running.backends.installed import LABELS
from engines.running.supervisor import Command

NAME = "sglang"

#: SGLang takes its key only as ``--api-key``; on a command line any user's ``ps`` shows it. This
#: launcher takes it from the environment (``EMBER_API_KEY``, removed before SGLang starts its own
#: processes) and hands it to ``sglang.launch_server`` inside the process, where ``ps`` cannot see it.
KEY_FROM_ENV = (
    "import os, runpy, sys\n"
    "key = os.environ.pop('EMBER_API_KEY', '')\n"
    "sys.argv = ['sglang.launch_server', *sys.argv[1:], *(['--api-key', key] if key else [])]\n"
    "runpy.run_module('sglang.launch_server', run_name='__main__', alter_sys=True)\n"
)

TABLE: dict[str, S.Arg] = {a.spec.key: a for a in (
    S.arg("context_length", "int", None, check=S.at_least(16), help="context length in tokens"),
    S.arg("mem_fraction_static", "float", None, check=S.between(0.01, 0.99),
          help="fraction of GPU memory for weights + KV cache (SGLang picks one by GPU size when unset)"),
    S.arg("tp_size", "int", 1, check=S.at_least(1), help="split the model over this many GPUs"),
    S.arg("dp_size", "int", 1, check=S.at_least(1)),
    S.arg("max_running_requests", "int", None, check=S.at_least(1)),
    S.arg("max_total_tokens", "int", None, check=S.at_least(16)),
    S.arg("chunked_prefill_size", "int", None),
    S.arg("dtype", "enum", "auto", choices=("auto", "half", "float16", "bfloat16", "float", "float32")),
    S.arg("quantization", "str", None),
    S.arg("kv_cache_dtype", "enum", "auto", choices=("auto", "fp8_e5m2", "fp8_e4m3")),
    S.arg("attention_backend", "str", None),
    S.arg("disable_cuda_graph", "bool", False, store_true=True, help="less memory at start, slower"),
    S.arg("trust_remote_code", "bool", False, store_true=True),
    S.arg("random_seed", "int", None),
    S.arg("chat_template", "str", None, help="a chat template file, for models that have none"),
    S.arg("log_level", "enum", "info", choices=("debug", "info", "warning", "error")),
)}

#: its own log lines, most specific first.
LOG_PATTERNS = log_table(
    # the KV pool (or the request pool) is exhausted while serving: not a failure to load
    (r"(?:Prefill|Decode) out of memory|KV cache pool is full", "kv_cache_full", {"cause": "space"}),
    (r"alloc_req_slots runs out of memory", "kv_cache_full", {"cause": "space", "pool": "requests"}),
    (r"The input \((?P<n_prompt_tokens>\d+) tokens\) is longer than the model.{1,2}s context length "
     r"\((?P<n_ctx_slot>\d+) tokens\)", "context_exceeded"),
    (r"Input length \((?P<n_prompt_tokens>\d+) tokens\) exceeds the maximum allowed length "
     r"\((?P<n_ctx_slot>\d+) tokens\)", "context_exceeded", {"limit": "pool"}),
    (r"Not enough memory\. Please try to increase --mem-fraction-static", "oom_load",
     {"memory": "gpu", "cause": "kv_cache"}),
    (r"max_total_tokens=\d+ is larger than the profiled value (?P<profiled>-\d+)", "oom_load",
     {"memory": "gpu", "cause": "kv_cache"}),
    (r"Model architectures \[(?P<architecture>[^\]]*)\] are not supported", "invalid_model",
     {"problem": "unknown_architecture"}),
    (r"Unsupported architectures: (?P<architecture>[\w.]+)", "invalid_model", {"problem": "unknown_architecture"}),
    (r"context_length \((?P<context_length>\d+)\) is (?:greater|larger) than the derived context_length",
     "bad_parameter", {"parameter": "context_length"}),
    (r"No module named '?sglang'?", "startup_failed", {"problem": "engine_missing"}),
    (r"memory leak detected", "engine_crashed"),  # the scheduler's own check failed: it stops
) + S.TORCH_PATTERNS + log_table(
    (r"Scheduler hit an exception|Initialization failed\. .*", "startup_failed"),
)

#: Lines only SGLang writes; what it writes while loading, and once it serves.
SIGNATURE = re.compile(r"sglang|sgl_kernel|sgl_jax|\bTP\d+\]|Prefill batch|Decode batch|fired up and ready to roll|"
                       r"mem[-_]fraction[-_]static|max[-_]running[-_]requests|Scheduler hit an exception|"
                       r"allow-auto-truncate|token_to_kv_pool|req_to_token_pool|launch_server")
LOADING = re.compile(r"Load weight|Memory pool end|Capture cuda graph|init_cuda_graphs|CudaGraphRunner|"
                     r"ModelRunner\(|load_model|Init torch distributed")
SERVING = re.compile(r"fired up and ready to roll|Prefill batch|Decode batch|event_loop_(?:normal|overlap)|"
                     r"\brun_batch\b|process_batch_result|" + S.HTTP_SERVING)

FIXES = {
    "kv_cache": ["mem_fraction_static", "context_length", "tp_size"],
    "gpu": ["mem_fraction_static", "disable_cuda_graph", "tp_size"],
}


@functools.lru_cache(maxsize=8)
def introspect(python: str, version: str = "") -> dict[str, S.Arg]:
    """SGLang's ``ServerArgs`` fields, read by the SGLang interpreter (cached: importing it is slow)."""
    return S.introspect_dataclass(python, version, "sglang.srt.server_args", "ServerArgs", "sglang-server-args",
                                  skip=("model_path", "served_model_name", "tokenizer_path"), negatable=False)


def table() -> dict[str, S.Arg]:
    """The documented arguments, plus every ``ServerArgs`` field of the SGLang that would run."""
    return S.full_table(NAME, TABLE, introspect)


class SGLang(S.GPUServerEngine):
    name = NAME
    label = LABELS[NAME]
    roles = Roles(context="context_length", parallel="max_running_requests")
    log_patterns = LOG_PATTERNS
    log_signature = SIGNATURE
    loading_lines = LOADING
    serving_lines = SERVING
    gpu_install = "pip install --upgrade 'sglang[all]'   (in SGLang's own environment)"
    tensor_parallel = "tp_size"
    past_training = "answers past that length may degrade"

    def table(self) -> dict[str, S.Arg]:
        return table()

    def command(self, spec: ModelSpec, values: dict[str, object], host: str, port: int, api_key: str) -> Command:
        python = S.interpreter(NAME)
        program = [python, "-c", KEY_FROM_ENV, "--model-path", str(spec.path),
                   "--served-model-name", spec.name, "--host", host, "--port", str(port),
                   *S.flags(values, table())]
        return S.exec_command(NAME, program, {"SGLANG_DISABLE_USAGE_STATS": "1", "EMBER_API_KEY": api_key},
                              health_path="/health")

    def fixes_for(self, kind: Kind, facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
        """Concrete parameter changes for a diagnosis of this engine, best first.

        SGLang's two memory failures want opposite moves: at start-up the KV cache does
        not fit (raise ``mem_fraction_static``); while running, activations do not (lower it).
        A KV pool exhausted while serving wants a bigger pool or fewer requests at once.
        """
        if kind == Kind.KV_CACHE_FULL:
            return _pool_fixes(facts, plan)
        if kind == Kind.CONTEXT_EXCEEDED:
            if facts.get("limit") == "pool":  # the KV pool holds fewer tokens than the context allows
                return _pool_fixes(facts, plan)[:1]
            return S.longer_context(facts, plan, "context_length")
        if kind != Kind.OOM_LOAD:
            return []
        frac = plan_param(plan, "mem_fraction_static")
        length = int(plan_param(plan, "context_length", units.DEFAULT_N_CTX))
        tp = int(plan_param(plan, "tp_size", 1))
        out = []
        if facts.get("cause") == "kv_cache":
            new = round(min(0.95, (frac or 0.85) + 0.05), 2)
            out.append(Fix(f"Give SGLang more of the GPU ({new:.0%})", {"mem_fraction_static": new},
                           "More memory for the model and its KV cache."))
            if length > 512:
                new_len = S.round_len(length // 2)
                out.append(Fix(f"Lower the context to {new_len:,} tokens", {"context_length": new_len}))
        else:
            new = round(max(0.3, (frac or 0.85) - 0.1), 2)
            out.append(Fix(f"Leave more GPU memory for computing ({new:.0%} for the cache)",
                           {"mem_fraction_static": new}, "SGLang ran out while computing, not while loading."))
            if not plan_param(plan, "disable_cuda_graph", False):
                out.append(Fix("Turn off CUDA graphs", {"disable_cuda_graph": True}, "Saves memory; slower."))
        if S.cuda_gpus(plan) >= tp * 2:
            out.append(Fix(f"Split the model over {tp * 2} GPUs", {"tp_size": tp * 2}))
        return out


def _pool_fixes(facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
    """A bigger KV pool, or fewer requests sharing it."""
    frac = plan_param(plan, "mem_fraction_static")
    out = []
    if (frac or 0.85) < 0.95:
        new = round(min(0.95, (frac or 0.85) + 0.05), 2)
        out.append(Fix(f"Give the KV cache more of the GPU ({new:.0%})", {"mem_fraction_static": new},
                       "A bigger pool of tokens for the requests being answered."))
    running = plan_param(plan, "max_running_requests")
    fewer = max(1, int(running) // 2) if running else 16
    out.append(Fix(f"Answer at most {fewer} requests at once", {"max_running_requests": fewer},
                   "The others wait their turn instead of filling the pool."))
    if facts.get("pool") == "requests":
        out.reverse()  # the request pool, not the tokens, ran out
    return out


ENGINE = SGLang()
