"""transformers: the default engine for PyTorch-format models.

Served by Ember's own thin OpenAI-compatible server (:mod:`engines.running.hf_server`,
Starlette on Uvicorn) because ``transformers serve`` loads models on demand and
has no API key. The server is started with the engine's interpreter (settings
``engine_python.transformers``, else Ember's own), which needs torch,
transformers, starlette and uvicorn, and the key in its environment, never on
the command line.
"""
from __future__ import annotations

import re
from typing import Mapping

from engines import units
from engines.diagnosis.types import Fix, Kind, log_table
from engines.machine.hardware import HardwareProfile
from engines.models.store import ModelSpec
from engines.running import engine_env
from engines.running.backends import _server as S
from engines.running.backends.base import PlanView, Prepared, Roles, plan_param
from engines.running.backends.installed import LABELS
from engines.running.supervisor import Command

NAME = "transformers"

TABLE: dict[str, S.Arg] = {a.spec.key: a for a in (
    S.arg("device", "enum", "auto", choices=("auto", "cpu", "cuda", "mps"),
          help="where the model runs; auto: CUDA, then Apple MPS, then the CPU"),
    S.arg("dtype", "enum", "auto", choices=("auto", "float32", "bfloat16", "float16"),
          help="weights' precision; auto: bf16 on GPUs that have it, fp16 on other GPUs, fp32 on the CPU"),
    S.arg("max_model_len", "int", None, check=S.at_least(16), help="context length in tokens"),
    S.arg("max_new_tokens", "int", 512, check=S.at_least(1), help="answer length when the request sets none"),
    S.arg("temperature", "float", 0.7, check=S.between(0, 5), help="default sampling temperature (0: greedy)"),
    S.arg("top_p", "float", 1.0, check=S.between(0, 1), help="default nucleus sampling"),
    S.arg("top_k", "int", 50, check=S.at_least(0), help="default top-k sampling (0: off)"),
    S.arg("trust_remote_code", "bool", False, store_true=True, help="run the model folder's own Python code"),
)}

#: its own log lines, most specific first.
LOG_PATTERNS = log_table(
    # a prompt longer than the model's positions: refused by generate, or the embedding lookup overflows
    (r"request \((?P<n_prompt_tokens>\d+) tokens\) exceeds the available context size \((?P<n_ctx_slot>\d+) tokens\)",
     "context_exceeded"),  # Ember's own server
    (r"Input length of input_ids is (?P<n_prompt_tokens>\d+), but `max_length` is set to (?P<n_ctx_slot>\d+)",
     "context_exceeded"),
    (r"indexSelect\w*: .*Assertion `srcIndex < srcSelectDimSize` failed|IndexError: index out of range in self",
     "context_exceeded"),
    # a sequence longer than the position table: the embeddings' sizes disagree
    (r"The size of tensor a \((?P<n_prompt_tokens>\d+)\) must match the size of tensor b \((?P<n_ctx_slot>\d+)\)",
     "context_exceeded"),
    (r"MPS backend out of memory", "oom_load", {"memory": "gpu"}),
) + S.TORCH_PATTERNS + log_table(
    (r"DefaultCPUAllocator: can't allocate memory|not enough memory: you tried to allocate", "oom_load",
     {"memory": "ram"}),
    (r"Unrecognized configuration class|does not recognize this architecture|"
     r"CONFIG_MAPPING\[config_dict\[.model_type.\]\]", "invalid_model", {"problem": "unknown_architecture"}),
    # weights of another shape than the model class builds: another model's, or another version's conversion
    (r"size mismatch for [\w.]+: copying a param with shape|Trying to set a tensor of shape .* this looks incorrect",
     "invalid_model", {"problem": "wrong_weights"}),
    (r"does not appear to have a file named|Error no file named", "invalid_model", {"problem": "missing"}),
    (r"SafetensorError|Error while deserializing header", "invalid_model", {"problem": "corrupt"}),
    # torch and transformers, or the HTTP stack Ember's server runs on (its own line names the install command)
    (r"No module named '?(?P<module>torch|transformers|starlette|uvicorn)'?", "startup_failed",
     {"problem": "engine_missing"}),
)

#: Lines only Transformers (and torch loading a checkpoint) writes; what it writes while loading, and answering.
SIGNATURE = re.compile(r"transformers[/\\.]|from_pretrained|Loading checkpoint shards|safetensors_rust|modeling_utils|"
                       r"`max_length`|input_ids|accelerate[/\\]|hf_server|AutoModel|Setting `pad_token_id`|"
                       r"Token indices sequence length")
LOADING = re.compile(r"Loading checkpoint shards|from_pretrained|load_state_dict|_load_pretrained_model|"
                     r"set_module_tensor_to_device")
SERVING = re.compile(r"generation[/\\]utils\.py|\bgenerate\(|Enter a query|Setting `pad_token_id`|" + S.HTTP_SERVING)

#: which parameters fix each memory (keys the engine's validate accepts); the values come from its fixes_for.
FIXES = {"gpu": ["max_model_len", "dtype", "device"], "ram": ["max_model_len", "dtype"]}


class Transformers(S.ServerEngine):
    name = NAME
    label = LABELS[NAME]
    roles = Roles(context="max_model_len")
    log_patterns = LOG_PATTERNS
    log_signature = SIGNATURE
    loading_lines = LOADING
    serving_lines = SERVING
    gpu_install = S.TORCH_CUDA_INSTALL

    def table(self) -> dict[str, S.Arg]:
        return TABLE

    def prepare(self, spec: ModelSpec, hw: HardwareProfile, values: dict[str, object]) -> Prepared:
        out = dict(values)
        warnings = S.default_context(spec, out, "max_model_len", units.DEFAULT_N_CTX,
                                     "answers past that length may degrade")
        device = out.get("device", "auto")
        if device == "cuda" and not hw.has_cuda:
            warnings.append("device=cuda was asked for but no NVIDIA GPU was found; the engine will fail to start")
        if device == "auto" and not hw.has_cuda and not hw.is_mac_arm:
            warnings.append("Transformers runs on the CPU here, slowly")
        return Prepared(out, None, warnings)

    def command(self, spec: ModelSpec, values: dict[str, object], host: str, port: int, api_key: str) -> Command:
        python = S.interpreter(NAME)
        program = [python, "-m", "engines.running.hf_server", "--model", str(spec.path), "--host", host,
                   "--port", str(port), "--served-model-name", spec.name, *S.flags(values, TABLE)]
        env = {"EMBER_API_KEY": api_key, **engine_env.child_env(python)}
        return S.exec_command(NAME, program, env, health_path="/health")

    def fixes_for(self, kind: Kind, facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
        if kind == Kind.CONTEXT_EXCEEDED:
            return S.longer_context(facts, plan, "max_model_len")
        if kind == Kind.GPU_UNUSABLE:
            if plan_param(plan, "device", "auto") == "cpu":
                return []
            return [Fix("Run on the CPU", {"device": "cpu"}, "Slower, but needs no GPU.")]
        if kind != Kind.OOM_LOAD:
            return []
        length = int(plan_param(plan, "max_model_len", units.DEFAULT_N_CTX))
        out = []
        if length > 512:
            new = max(512, length // 2)
            out.append(Fix(f"Lower the context to {new:,} tokens", {"max_model_len": new}))
        if plan_param(plan, "dtype", "auto") in ("auto", "float32"):
            out.append(Fix("Load the weights in half precision", {"dtype": "bfloat16"},
                           "Half the memory of float32."))
        if facts.get("memory") == "gpu" and plan_param(plan, "device", "auto") != "cpu":
            out.append(Fix("Run on the CPU", {"device": "cpu"}, "Slower, but uses the computer's RAM."))
        return out


ENGINE = Transformers()
