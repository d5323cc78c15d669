"""transformers, MLX, vLLM and SGLang backends: parameters, commands, selection, log classification.

Pure functions only (no engine is started here); the readiness tests against fake
vLLM/SGLang server processes are in test_backends_fake_servers.py.
"""
from __future__ import annotations

import json
import re
import sys

import pytest

from engines.diagnosis.evidence import first_match
from engines.diagnosis.types import Fix, Kind, LogPattern
from engines.running import backends
from engines.running import params as P
from engines.running import selection
from engines.running.backends import _server as S
from engines.running.backends import mlx as mlx_module, sglang as sglang_module
from engines.running.backends import transformers as transformers_module, vllm as vllm_module
from engines.machine.hardware import GPU, HardwareProfile
from engines.models.store import ModelSpec

transformers, mlx, vllm, sglang = (backends.get(n) for n in ("transformers", "mlx", "vllm", "sglang"))
BACKENDS = (transformers, mlx, vllm, sglang)


def cuda_hw(n_gpus: int = 1) -> HardwareProfile:
    gpus = [GPU(f"NVIDIA GeForce RTX 4090 #{i}", "nvidia", "cuda", 24 * 2**30, 23 * 2**30, f"CUDA{i}")
            for i in range(n_gpus)]
    return HardwareProfile("linux", "x86_64", 16, 64 * 2**30, 60 * 2**30, gpus, "AMD Ryzen", False, "cuda")


def cpu_hw() -> HardwareProfile:
    return HardwareProfile("linux", "x86_64", 2, 24 * 2**30, 22 * 2**30, [], "AMD EPYC", False, "cpu")


def mac_hw() -> HardwareProfile:
    return HardwareProfile("darwin", "arm64", 8, 16 * 2**30, 12 * 2**30, [], "Apple M2", True, "metal")


def pytorch_spec(arch: str = "Qwen2ForCausalLM", ctx: int = 32768, fmt: str = "pytorch", quant: str = "none"):
    return ModelSpec(name="qwen2.5-0.5b", format=fmt, quantization=quant, architecture=arch,
                     path="/models/qwen2.5-0.5b", context_length=ctx)


# -- parameters ------------------------------------------------------------------------

@pytest.mark.parametrize("mod,pairs,expected", [
    (vllm, ["max_model_len=2048", "gpu_memory_utilization=0.8", "tensor_parallel_size=2"],
     {"max_model_len": 2048, "gpu_memory_utilization": 0.8, "tensor_parallel_size": 2}),
    (vllm, ["--max-model-len=1024", "enforce_eager=true"], {"max_model_len": 1024, "enforce_eager": True}),
    (sglang, ["context_length=8192", "mem_fraction_static=0.7", "tp_size=4"],
     {"context_length": 8192, "mem_fraction_static": 0.7, "tp_size": 4}),
    (transformers, ["dtype=bfloat16", "max_model_len=512", "temperature=0"],
     {"dtype": "bfloat16", "max_model_len": 512, "temperature": 0.0}),
    (mlx, ["max_tokens=64", "temperature=0.2"], {"max_tokens": 64, "temperature": 0.2}),
])
def test_validate_types_values(mod, pairs, expected):
    assert mod.validate(pairs) == expected


@pytest.mark.parametrize("mod,pair,words", [
    (vllm, "gpu_memory_utilization=1.5", "between 0.01 and 1"),
    (vllm, "tensor_parallel_size=0", "at least 1"),
    (vllm, "max_model_len=lots", "expects an integer"),
    (sglang, "mem_fraction_static=0", "between 0.01 and 0.99"),
    (transformers, "dtype=int8", "expects one of auto, float32, bfloat16, float16"),
    (vllm, "port=8000", "cannot be set: Ember picks a free port"),
    (sglang, "api_key=abc", "cannot be set"),
])
def test_validate_refuses_with_reason(mod, pair, words):
    with pytest.raises(P.ParamError) as err:
        mod.validate([pair])
    assert words in err.value.message


def test_unknown_key_suggests_the_engines_own_name():
    with pytest.raises(P.ParamError) as err:
        vllm.validate(["max_model_length=4096"])
    assert "is not a vLLM parameter" in err.value.message
    assert "max_model_len" in err.value.suggestions
    with pytest.raises(P.ParamError) as err:
        sglang.validate(["mem_fraction=0.8"])
    assert "mem_fraction_static" in err.value.suggestions


def test_fix_parameters_are_keys_validate_accepts():
    """The diagnosis offers these as one-click fixes: each must pass the backend's validate."""
    for module in (transformers_module, mlx_module, vllm_module, sglang_module):
        keys = {k for ks in module.FIXES.values() for k in (ks if isinstance(ks, list) else [])}
        keys |= {k for ks in module.FIXES.values() for d in ks if isinstance(d, dict) for k in d}
        schema = module.ENGINE.schema()
        for key in keys:
            if isinstance(key, str):
                assert key in schema, f"{module.NAME}: fix parameter {key} unknown"


def engine_program(cmd) -> list[str]:
    """The engine's own command line inside the worker's ``exec --`` (without the die-with-parent shim)."""
    program = cmd.argv[cmd.argv.index("--") + 1:]
    if sys.platform.startswith("linux"):
        assert program[1:3] == ["-c", S.DIE_WITH_PARENT] and program[3] == program[0]
        program = program[3:]
    return program


# -- commands --------------------------------------------------------------------------

def test_vllm_command_maps_params_and_keeps_key_off_the_command_line():
    spec = pytorch_spec()
    values, _, warnings = vllm.prepare(spec, cuda_hw(2), vllm.validate(
        ["gpu_memory_utilization=0.75", "tensor_parallel_size=2"]))
    assert values["max_model_len"] == 4096  # Ember's default: at most 4096, not the model's 32768
    cmd = vllm.command(spec, values, "127.0.0.1", 8123, "ember-secret-key")
    argv = cmd.argv
    program = engine_program(cmd)
    assert program[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[:argv.index("--")][-2:] == ["engines.running.worker", "exec"]  # never outlives Ember
    pairs = dict(zip(program[3::2], program[4::2]))
    assert pairs["--model"] == spec.path and pairs["--host"] == "127.0.0.1" and pairs["--port"] == "8123"
    assert pairs["--max-model-len"] == "4096"
    assert pairs["--gpu-memory-utilization"] == "0.75"
    assert pairs["--tensor-parallel-size"] == "2"
    assert pairs["--served-model-name"] == spec.name
    assert "ember-secret-key" not in " ".join(argv) and "ember-secret-key" not in cmd.display
    assert cmd.env["VLLM_API_KEY"] == "ember-secret-key"
    assert cmd.health_path == "/health"
    assert warnings == []


def test_vllm_warns_about_more_gpus_than_present():
    _, _, warnings = vllm.prepare(pytorch_spec(), cuda_hw(1), {"tensor_parallel_size": 4})
    assert warnings == ["tensor_parallel_size 4 asks for more GPUs than this computer has (1)"]


def test_sglang_key_never_reaches_the_command_line():
    spec = pytorch_spec()
    values, _, _ = sglang.prepare(spec, cuda_hw(), sglang.validate(["mem_fraction_static=0.8", "tp_size=1"]))
    cmd = sglang.command(spec, values, "127.0.0.1", 30123, "ember-secret-key")
    program = engine_program(cmd)
    assert program[1] == "-c" and "sglang.launch_server" in program[2]
    assert program[program.index("--model-path") + 1] == spec.path
    assert program[program.index("--context-length") + 1] == "4096"
    assert program[program.index("--mem-fraction-static") + 1] == "0.8"
    assert program[program.index("--tp-size") + 1] == "1"
    # SGLang reads it only from --api-key: the launcher adds it inside the process, never on the command line
    assert "ember-secret-key" not in " ".join(cmd.argv) and "ember-secret-key" not in cmd.display
    assert cmd.env["EMBER_API_KEY"] == "ember-secret-key" and "--api-key" in program[2]


def test_transformers_command_uses_our_server_with_key_in_environment(tmp_path):
    spec = ModelSpec(name="tiny", format="pytorch", quantization="none", path=str(tmp_path), context_length=32768)
    values, _, warnings = transformers.prepare(spec, cpu_hw(), transformers.validate(["temperature=0"]))
    cmd = transformers.command(spec, values, "127.0.0.1", 9000, "k-123")
    program = engine_program(cmd)
    assert program[1:3] == ["-m", "engines.running.hf_server"]
    assert program[program.index("--max-model-len") + 1] == "4096"
    assert program[program.index("--temperature") + 1] == "0.0"
    assert "k-123" not in " ".join(cmd.argv) and cmd.env["EMBER_API_KEY"] == "k-123"
    assert warnings == ["Transformers runs on the CPU here, slowly"]


def test_mlx_command_has_a_bootstrap_that_waits_for_the_model(tmp_path):
    spec = ModelSpec(name="tiny", format="mlx", quantization="4bit", path=str(tmp_path))
    cmd = mlx.command(spec, mlx.validate(["max_tokens=32", "temperature=0.5"]), "127.0.0.1", 9001, "k-mlx")
    assert cmd.env["EMBER_API_KEY"] == "k-mlx" and "k-mlx" not in " ".join(cmd.argv) and "KEY" in engine_program(cmd)[2]
    program = engine_program(cmd)
    assert program[1] == "-c" and "mlx_lm.server" in program[2]
    assert program[3:] == ["--model", str(tmp_path), "--served-model-name", "tiny", "--host", "127.0.0.1",
                           "--port", "9001", "--max-tokens", "32", "--temp", "0.5"]
    assert "<script>" in cmd.display and "\n" not in cmd.display
    assert "handle_models_request" in program[2] and "served_models" in program[2]


def test_llamacpp_serves_the_model_under_its_name_never_its_path(tmp_path):
    """xllamacpp's model_alias: what `ember serve` prints is the id /v1/models lists (see test_core_real)."""
    spec = ModelSpec(name="tiny", format="gguf", quantization="Q4_K_M", path=str(tmp_path / "tiny.gguf"))
    llama = backends.get("llamacpp")
    cmd = llama.command(spec, {"n_ctx": 512}, "127.0.0.1", 9002, "k-1")
    config = json.loads(cmd.stdin_line)
    assert config["model_alias"] == "tiny" and config["model_path"] == spec.path
    with pytest.raises(P.ParamError) as err:
        llama.validate(["model_alias=other"])
    assert "cannot be set" in err.value.problem


# -- selection (the seed's rules stay; overrides only where conditions hold) -----------

def test_vllm_chosen_on_linux_cuda_for_a_supported_architecture():
    sel = selection.select(pytorch_spec(), cuda_hw(), installed={"vllm": True, "transformers": True})
    assert sel.engine == "vllm"
    assert "sglang" in sel.eligible


def test_transformers_when_vllm_is_not_installed_and_sglang_only_on_request():
    installed = {"vllm": False, "transformers": True, "sglang": True}
    sel = selection.select(pytorch_spec(), cuda_hw(), installed=installed)
    assert sel.engine == "transformers"
    assert sel.reasons["vllm"] == "vLLM would run it but is not installed"
    assert selection.select(pytorch_spec(), cuda_hw(), "sglang", installed).engine == "sglang"


def test_vllm_and_sglang_refused_without_cuda():
    sel = selection.select(pytorch_spec(), cpu_hw(), "vllm", {"vllm": True})
    assert sel.engine is None
    assert sel.reasons["vllm"] == "vLLM needs an NVIDIA GPU with CUDA; none was found"
    sel = selection.select(pytorch_spec(), cpu_hw(), "sglang", {"sglang": True})
    assert sel.engine is None


def test_mlx_chosen_on_apple_silicon_and_only_asked_for_elsewhere():
    spec = ModelSpec(name="m", format="mlx", quantization="4bit", path="/m")
    assert selection.select(spec, mac_hw(), installed={"mlx": True}).engine == "mlx"
    assert selection.select(spec, cpu_hw(), installed={"mlx": True}).engine is None
    forced = selection.select(pytorch_spec(), cpu_hw(), "mlx", {"mlx": True, "transformers": True})
    assert forced.engine == "mlx" and "slowly" in forced.warning


# -- log classification on real lines --------------------------------------------------

def classify(engine, lines: list[str]):
    """The first (table-order) pattern of the backend that matches any line: (kind, facts)."""
    m = first_match(engine.log_patterns, lines)
    return (m.kind, m.facts) if m else (None, {})


# Lines as vLLM, SGLang, torch and mlx print them (from the engines' issue trackers).
REAL_LINES = [
    (vllm, "(EngineCore_DP0 pid=6880) ValueError: To serve at least one request with the models's max seq len "
           "(131072), (4.54 GiB KV cache is needed, which is larger than the available KV cache memory (1.71 GiB). "
           "Based on the available memory, the estimated maximum model length is 49152. Try increasing "
           "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
     "oom_load", {"cause": "max_model_len", "max_model_len": "131072", "estimated_max_len": "49152",
                  "available_gib": "1.71"}),
    (vllm, "ValueError: The model's max seq len (4096) is larger than the maximum number of tokens that can be "
           "stored in KV cache (3664). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
           "initializing the engine.",
     "oom_load", {"cause": "max_model_len", "max_model_len": "4096", "kv_tokens": "3664"}),
    (vllm, "ERROR 11-18 18:07:28 engine.py:366] ValueError: No available memory for the cache blocks. Try "
           "increasing `gpu_memory_utilization` when initializing the engine.",
     "oom_load", {"cause": "kv_cache", "memory": "gpu"}),
    (vllm, "(EngineCore_0 pid=1810465) ERROR 09-03 11:03:37 [core.py:712] ValueError: Free memory on device "
           "(7.34/139.72 GiB) on startup is less than desired GPU memory utilization (0.9, 125.75 GiB). Decrease "
           "GPU memory utilization or reduce GPU memory used by other processes.",
     "oom_load", {"cause": "gpu_busy", "free_gib": "7.34", "gpu_memory_utilization": "0.9"}),
    (vllm, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 224.00 MiB. GPU 0 has a total capacity "
           "of 79.19 GiB of which 10.81 MiB is free.",
     "oom_load", {"memory": "gpu", "alloc_mib": "224.00"}),
    (vllm, "ValueError: Total number of attention heads (14) must be divisible by tensor parallel size (4).",
     "bad_parameter", {"parameter": "tensor_parallel_size", "tensor_parallel_size": "4"}),
    (sglang, "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.",
     "oom_load", {"cause": "kv_cache"}),
    (sglang, "[2025-07-02 07:41:59 DP0 TP0] max_total_tokens=131072 is larger than the profiled value -561981. "
             "Use the profiled value instead.",
     "oom_load", {"cause": "kv_cache"}),
    (sglang, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.50 GiB.", "oom_load",
     {"memory": "gpu", "alloc_gib": "1.50"}),
    (transformers, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total "
                   "capacity of 7.79 GiB of which 3.31 MiB is free.", "oom_load", {"memory": "gpu"}),
    (transformers, "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                   "memory: you tried to allocate 17179869184 bytes. Error code 12 (Cannot allocate memory)",
     "oom_load", {"memory": "ram"}),
    (mlx, "libc++abi: terminating due to uncaught exception of type std::runtime_error: [METAL] Command buffer "
          "execution failed: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
     "oom_load", {"memory": "gpu"}),
    (mlx, "ValueError: Model type foobar not supported.", "invalid_model", {"architecture": "foobar"}),
    (mlx, "RuntimeError: [json.exception.parse_error.101] parse error at line 1, column 3: syntax error while "
          "parsing object key - invalid literal; last read: '{no'; expected string literal",  # mx.load, bad header
     "invalid_model", {"problem": "corrupt"}),
    (transformers, "safetensors_rust.SafetensorError: Error while deserializing header: HeaderTooLarge",
     "invalid_model", {"problem": "corrupt"}),
    (transformers, "ModuleNotFoundError: No module named 'torch'", "startup_failed",
     {"problem": "engine_missing", "module": "torch"}),
    # Ember's own server (engines/running/hf_server.py) in an interpreter without its HTTP stack
    (transformers, "ember-hf: No module named 'uvicorn': Ember's Transformers server needs starlette and uvicorn in "
                   "this Python (/envs/hf/bin/python); install them with: /envs/hf/bin/python -m pip install "
                   "'starlette>=0.40' 'uvicorn>=0.30'", "startup_failed",
     {"problem": "engine_missing", "module": "uvicorn"}),
]


@pytest.mark.parametrize("mod,line,kind,facts", REAL_LINES, ids=[f"{m.name}-{i}" for i, (m, *_) in
                                                                   enumerate(REAL_LINES)])
def test_real_log_lines_are_classified(mod, line, kind, facts):
    got_kind, got_facts = classify(mod, ["INFO some unrelated start-up line", line])
    assert got_kind == kind
    for k, v in facts.items():
        assert got_facts.get(k) == v, (k, got_facts)


def test_plain_startup_lines_are_not_errors():
    lines = ["INFO 11-25 13:01:02 [__init__.py:244] Automatically detected platform cuda.",
             "INFO 11-25 13:01:09 [gpu_model_runner.py:1067] Model loading took 0.5124 GiB and 1.977005 seconds",
             "[2026-11-25 13:01:05 TP0] Load weight begin. avail mem=23.20 GB"]
    for mod in BACKENDS:
        assert classify(mod, lines) == (None, {})


def test_patterns_have_the_diagnosis_shape():
    for engine in BACKENDS:
        assert engine.log_patterns
        for entry in engine.log_patterns:
            assert isinstance(entry, LogPattern) and isinstance(entry.kind, Kind)
            assert isinstance(entry.regex, re.Pattern) and entry.regex.flags & re.IGNORECASE
            json.dumps(dict(entry.facts))


@pytest.mark.parametrize("mod,facts,plan_params,first", [
    (vllm, {"cause": "max_model_len", "max_model_len": "131072", "estimated_max_len": "49152"},
     {"max_model_len": 131072}, {"max_model_len": 49152}),
    (vllm, {"cause": "max_model_len", "max_model_len": "4096", "kv_tokens": "3664"}, {"max_model_len": 4096},
     {"max_model_len": 3584}),
    (vllm, {"cause": "kv_cache", "memory": "gpu"}, {"max_model_len": 4096}, {"max_model_len": 2048}),
    (vllm, {"cause": "gpu_busy", "free_gib": "7.34", "total_gib": "139.72"}, {}, {"gpu_memory_utilization": 0.02}),
    (vllm, {"cause": "gpu_busy", "free_gib": "31.44", "total_gib": "47.38"}, {}, {"gpu_memory_utilization": 0.63}),
    (vllm, {"memory": "gpu"}, {"max_model_len": 4096}, {"max_model_len": 2048}),
    (sglang, {"cause": "kv_cache"}, {"mem_fraction_static": 0.8}, {"mem_fraction_static": 0.85}),
    (sglang, {"memory": "gpu"}, {}, {"mem_fraction_static": 0.75}),
    (transformers, {"memory": "gpu"}, {"max_model_len": 4096}, {"max_model_len": 2048}),
    (mlx, {"memory": "gpu"}, {}, {"kv_bits": 4}),
])
def test_fixes_are_concrete_and_valid(mod, facts, plan_params, first):
    class Plan:  # the two LaunchPlan fields fixes_for reads
        params = plan_params
        hardware = cuda_hw(4)

    fixes = mod.fixes_for("oom_load", {"memory": "gpu", **facts}, Plan)
    if first == {"gpu_memory_utilization": 0.02}:  # 7 GiB free of 140: no sensible fraction left
        assert fixes == []
        return
    assert fixes[0].changes == first
    for f in fixes:
        assert isinstance(f, Fix) and f.label
        assert mod.validate(f.changes) == f.changes  # every fix passes the backend's own validation
