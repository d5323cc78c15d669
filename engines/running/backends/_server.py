"""What the engines with their own server (transformers, MLX, vLLM, SGLang) share.

Each of them is an OpenAI-compatible server program run by our worker in
``exec`` mode, so it never outlives Ember. Their parameters are a table of
:class:`Arg` (Ember's key = the engine's own argument name in snake case, the
command-line flag, a range check), validated the same way as llama.cpp's.
"""
from __future__ import annotations

import abc
import hashlib
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

from engines import paths, units
from engines.diagnosis.types import Fix, log_table
from engines.machine.hardware import HardwareProfile
from engines.models.store import ModelSpec
from engines.running import engine_env
from engines.running import params as P
from engines.running.backends.base import Engine, PlanView, Prepared, plan_param
from engines.running.backends.installed import LABELS, availability
from engines.running.supervisor import Command, worker_argv

log = logging.getLogger(__name__)

#: tokens kept free for the answer when a fix sizes a context to hold a prompt
REPLY_ROOM = 512

#: What torch prints, under Transformers, vLLM and SGLang alike, when it cannot use the GPU or runs out of its
#: memory (each engine's own lines come first in its table). Sizes in the units the diagnosis reads (alloc_mib).
TORCH_PATTERNS = log_table(
    (r"NVIDIA driver on your system is too old \(found version (?P<driver_cuda>\d+)\)", "gpu_unusable",
     {"problem": "driver_too_old"}),
    (r"CUDA driver version is insufficient for CUDA runtime version|NVIDIA driver on your system is too old|"
     r"undefined symbol: cuTensorMapEncodeTiled", "gpu_unusable", {"problem": "driver_too_old"}),
    (r"Torch not compiled with CUDA enabled", "gpu_unusable", {"problem": "cpu_build"}),
    (r"Found no NVIDIA driver on your system", "gpu_unusable", {"problem": "no_driver"}),
    (r"No CUDA GPUs are available|no CUDA-capable device is detected", "gpu_unusable", {"problem": "no_device"}),
    (r"cudaGetDeviceCount\(\).*Error (?P<cuda_error>\d+)", "gpu_unusable", {"problem": "init_failed"}),
    (r"No accelerator \([^)]*\) (?:or platform plugin )?is available", "gpu_unusable", {"problem": "no_device"}),
    (r"CUDA out of memory\. Tried to allocate (?P<alloc_mib>[\d.]+) MiB", "oom_load", {"memory": "gpu"}),
    (r"CUDA out of memory\. Tried to allocate (?P<alloc_gib>[\d.]+) GiB", "oom_load", {"memory": "gpu"}),
    (r"torch\.(?:cuda\.)?OutOfMemoryError|CUDA error: out of memory|CUDA out of memory", "oom_load", {"memory": "gpu"}),
    # a GPU kernel's fault: the process (or its CUDA context) is lost
    (r"CUDA error: (?P<cuda_fault>an illegal memory access was encountered|device-side assert triggered|"
     r"unspecified launch failure)", "engine_crashed"),
)

#: How to install torch's CUDA build in an engine's environment (the driver decides which CUDA it can run).
TORCH_CUDA_INSTALL = ("pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu128   "
                      "(cu128 for a driver of CUDA 12.8 or newer: `nvidia-smi` shows yours; cu126, cu118 for older)")

#: Lines a server that speaks HTTP writes once it answers requests (uvicorn's and http.server's access logs).
HTTP_SERVING = r'"(?:POST|GET) /(?:v1/)?\S+ HTTP/1\.[01]" 200'

#: Keys Ember sets itself for these engines.
OWNED = {
    "model": "the model is chosen by name or path", "model_path": "the model is chosen by name or path",
    "host": "engines listen on 127.0.0.1 only", "port": "Ember picks a free port",
    "api_key": "Ember creates a fresh API key for each launch",
}


@dataclass(frozen=True)
class Arg:
    spec: P.ParamSpec
    flag: str | None                       # command-line flag; None: Ember uses it itself
    help: str = ""
    check: Callable[[object], str | None] | None = None   # None when fine, else the problem
    store_true: bool = False               # a flag without a value (only written when true)
    negatable: bool = False                # store_true with a ``--no-...`` form (argparse BooleanOptionalAction)


def arg(key: str, type_: str, default=None, flag: str | None = "", help: str = "", check=None,
        choices: tuple[str, ...] = (), store_true: bool = False, negatable: bool = False) -> Arg:
    if flag == "":
        flag = "--" + key.replace("_", "-")
    return Arg(P.ParamSpec(key, type_, default, tuple(choices)), flag, help, check, store_true, negatable)


def between(lo: float, hi: float, what: str = "") -> Callable[[object], str | None]:
    def check(v):
        return None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}{what}, got {v}"
    return check


def at_least(lo: int) -> Callable[[object], str | None]:
    return lambda v: None if v >= lo else f"must be at least {lo}, got {v}"


def full_table(engine: str, documented: dict[str, Arg],
               introspect: Callable[[str, str], dict[str, Arg]]) -> dict[str, Arg]:
    """The documented arguments, plus every field the engine that would run reports of itself."""
    a = availability(engine)
    extra = introspect(a.interpreter, a.version or "") if a.installed and a.interpreter else {}
    return {**extra, **documented}


def introspect_dataclass(python: str, version: str, module: str, cls: str, cache_name: str,
                         skip: tuple[str, ...], negatable: bool) -> dict[str, Arg]:
    """An engine's argument dataclass (vLLM's EngineArgs, SGLang's ServerArgs) as Ember arguments.

    Booleans are flags; ``negatable`` when the engine also takes ``--no-flag``
    (argparse's BooleanOptionalAction)."""
    found: dict[str, Arg] = {}
    for name, annotation, default in dataclass_fields(python, version, module, cls, cache_name):
        if name in OWNED or name in skip:
            continue
        t = type_of(annotation, default)
        found[name] = arg(name, t, default, store_true=(t == "bool"), negatable=negatable and t == "bool")
    return found


def default_context(spec, out: dict[str, object], key: str, default: int, beyond: str) -> list[str]:
    """Ember's context default (at most ``default``, never past training); a warning when asked past it."""
    trained = spec.context_length or default
    out.setdefault(key, min(default, trained))
    if out[key] > trained:
        return [f"{key} {out[key]:,} is larger than the context the model was trained on ({trained:,}); {beyond}"]
    return []


def gpu_count_warning(hw, out: dict[str, object], key: str) -> list[str]:
    n_gpus = sum(1 for g in hw.gpus if g.backend == "cuda")
    tp = int(out.get(key, 1))
    if n_gpus and tp > n_gpus:
        return [f"{key} {tp} asks for more GPUs than this computer has ({n_gpus})"]
    return []


def validate(engine: str, pairs, table: dict[str, Arg]) -> dict[str, object]:
    """``key=value`` pairs checked against an engine's table; ParamError on the first bad one."""
    if isinstance(pairs, (list, tuple)):
        pairs = dict(P.parse_assignment(p) for p in pairs)
    out: dict[str, object] = {}
    for raw_key, raw in pairs.items():
        key = raw_key.strip().lstrip("-").replace("-", "_")
        if key in OWNED:
            raise P.ParamError(key, f"cannot be set: {OWNED[key]}", raw)
        a = table.get(key)
        if a is None:
            raise P.ParamError(key, f"is not a {LABELS[engine]} parameter", raw, P.suggest(key, tuple(table)))
        value = P.coerce(a.spec, raw)
        P.require_finite(key, value)
        if a.check is not None and (problem := a.check(value)):
            raise P.ParamError(key, problem, value)
        out[key] = value
    return out


def flags(values: dict[str, object], table: dict[str, Arg]) -> list[str]:
    """The engine's command-line arguments for validated values (None values left out)."""
    out: list[str] = []
    for key, value in values.items():
        a = table.get(key)
        if a is None or a.flag is None or value is None:
            continue
        if a.store_true:
            if value:
                out.append(a.flag)
            elif a.negatable:
                out.append("--no-" + a.flag[2:])
        elif a.spec.type == "bool":
            out += [a.flag, "true" if value else "false"]
        elif a.spec.type in ("list", "set"):
            out += [a.flag, *[str(v) for v in value]]
        else:
            out += [a.flag, str(value)]
    return out


def interpreter(engine: str) -> str:
    """The Python that runs ``engine`` (the configured one, else Ember's own)."""
    python = engine_env.python_for(engine)
    if python is None:
        a = availability(engine)
        raise P.ParamError("", f"{LABELS[engine]} needs a Python environment with it installed; "
                               f"set one in Settings > Engines ({a.install_command})")
    return python


#: Run by the engine's own interpreter before it becomes the engine: on Linux, ask the kernel
#: to SIGKILL it when its parent (our worker) dies, even by SIGKILL, which the worker cannot
#: forward. PR_SET_PDEATHSIG survives execv, so the engine itself carries it.
DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def exec_command(engine: str, program: list[str], env: dict[str, str] | None = None,
                 health_path: str = "/health", secret: str | None = None) -> Command:
    """Run ``program`` (the engine's own server; ``program[0]`` is its Python) as our worker's child."""
    if sys.platform.startswith("linux"):
        program = [program[0], "-c", DIE_WITH_PARENT, *program]
    argv = worker_argv("exec", "--", *program)
    shown = " ".join("'<script>'" if "\n" in a else a for a in argv)
    if secret:
        shown = shown.replace(secret, "***")
    return Command(argv=argv, env=dict(env or {}), health_path=health_path, display=shown)


class ServerEngine(Engine):
    """An engine run as its own server program; its parameters are a table of :class:`Arg`."""

    @abc.abstractmethod
    def table(self) -> dict[str, Arg]:
        """The engine's arguments by Ember's key."""

    def schema(self) -> dict[str, P.ParamSpec]:
        return {k: a.spec for k, a in self.table().items()}

    def validate(self, pairs) -> dict[str, object]:
        return validate(self.name, pairs, self.table())


class GPUServerEngine(ServerEngine):
    """vLLM and SGLang: Ember's context default, and tensor parallelism checked against the GPUs here."""

    tensor_parallel: ClassVar[str]      # the key that splits the model over GPUs
    past_training: ClassVar[str]        # what a context longer than the model's training leads to

    def prepare(self, spec: ModelSpec, hw: HardwareProfile, values: dict[str, object]) -> Prepared:
        """A context of at most DEFAULT_N_CTX tokens (the engine's default, the model's full context,
        often does not fit the KV cache), one GPU per model unless asked."""
        out = dict(values)
        warnings = default_context(spec, out, self.roles.context, units.DEFAULT_N_CTX, self.past_training)
        warnings += gpu_count_warning(hw, out, self.tensor_parallel)
        return Prepared(out, None, warnings)


def cuda_gpus(plan: PlanView | None) -> int:
    """NVIDIA GPUs of the plan's machine: how far tensor parallelism can split a model."""
    hw = getattr(plan, "hardware", None)
    return sum(1 for g in getattr(hw, "gpus", []) if g.backend == "cuda")


def round_len(n: int) -> int:
    """A context length vLLM/SGLang accept comfortably: a multiple of 256 (at least 256)."""
    return max(256, int(n) // 256 * 256)


def longer_context(facts: Mapping[str, object], plan: PlanView | None, key: str, what: str = "") -> list[Fix]:
    """Raise the context role ``key`` to hold the prompt the log counted, with room for the answer.

    Nothing when the prompt alone is as long as the model was trained for, or the context already holds it."""
    n_prompt = facts.get("n_prompt_tokens")
    if not n_prompt:
        return []
    need = int(n_prompt) + REPLY_ROOM
    trained = getattr(getattr(plan, "model", None), "context_length", None) if plan is not None else None
    if trained and int(n_prompt) >= trained:
        return []
    new = -(-need // 256) * 256
    if trained:
        new = min(new, int(trained))
    now = facts.get("n_ctx_slot") or plan_param(plan, key)
    if now and new <= int(now):
        return []
    note = (f"Room for this message and about {new - int(n_prompt):,} tokens of answer"
            + (f"; the model was trained for {int(trained):,}." if trained else
               ", if the model was trained for that many."))
    return [Fix(f"Raise the context to {new:,} tokens{what}", {key: new}, note)]


# -- reading an engine's own argument list in its interpreter ------------------------------

_FIELDS = (
    "import dataclasses, importlib, json, sys\n"
    "cls = getattr(importlib.import_module(sys.argv[1]), sys.argv[2])\n"
    "out = []\n"
    "for f in dataclasses.fields(cls):\n"
    "    d = f.default if isinstance(f.default, (bool, int, float, str, type(None))) else None\n"
    "    t = f.type if isinstance(f.type, str) else getattr(f.type, '__name__', str(f.type))\n"
    "    out.append([f.name, t, d])\n"
    "print('EMBER-ARGS ' + json.dumps(out))\n"
)


def type_of(annotation: str, default) -> str:
    """Ember's parameter type for a dataclass field's annotation."""
    a = annotation.lower().replace("optional[", "")
    if isinstance(default, bool) or a.startswith("bool"):
        return "bool"
    if a.startswith("int"):
        return "int"
    if a.startswith("float"):
        return "float"
    return "str"


def dataclass_fields(python: str, version: str, module: str, cls: str, cache_name: str) -> list:
    """``[name, annotation, default]`` of an engine's argument dataclass, asked of ``python``.

    Importing vLLM or SGLang takes many seconds, so the answer is kept on disk per
    interpreter and engine version (data folder, ``cache/``); [] when it cannot be read.
    """
    digest = hashlib.sha1(f"{python}\0{version}".encode()).hexdigest()[:16]
    cache = paths.data_dir() / "cache" / f"{cache_name}-{digest}.json"
    try:
        return json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    try:
        out = subprocess.run([python, "-c", _FIELDS, module, cls], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("cannot read %s.%s with %s: %s", module, cls, python, exc)
        return []
    line = next((l for l in out.stdout.splitlines() if l.startswith("EMBER-ARGS ")), None)
    if line is None:
        log.info("%s.%s not readable with %s: %s", module, cls, python, out.stderr.strip()[-300:])
        return []
    fields = json.loads(line[len("EMBER-ARGS "):])
    try:
        paths.atomic_write_text(cache, json.dumps(fields))
    except OSError as exc:
        log.info("cannot cache %s's arguments: %s", cache_name, exc)
    return fields
