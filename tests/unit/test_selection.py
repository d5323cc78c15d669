"""The seed's engine rules, as a table: (format, quantization, architecture, machine) -> engine."""
import pytest

from engines.running import selection
from engines.machine.hardware import GPU, HardwareProfile
from engines.models.store import ModelSpec

GiB = 1024 ** 3


def machine(os_="linux", arch="x86_64", gpu=None):
    gpus = []
    if gpu == "cuda":
        gpus = [GPU("NVIDIA GeForce RTX 4090", "nvidia", "cuda", 24 * GiB, 23 * GiB, "CUDA0")]
    elif gpu == "metal":
        gpus = [GPU("Apple M2", "apple", "metal", 12 * GiB, 11 * GiB, "Metal")]
    elif gpu == "rocm":
        gpus = [GPU("AMD Radeon RX 7900 XTX", "amd", "rocm", 24 * GiB, 23 * GiB, "ROCm0")]
    return HardwareProfile(os_, arch, 8, 32 * GiB, 30 * GiB, gpus, apple_silicon=os_ == "darwin" and arch == "arm64")


LINUX_CUDA = machine("linux", "x86_64", "cuda")
LINUX_CPU = machine("linux", "x86_64")
LINUX_ROCM = machine("linux", "x86_64", "rocm")
MAC_ARM = machine("darwin", "arm64", "metal")
MAC_INTEL = machine("darwin", "x86_64")
WIN_CUDA = machine("windows", "x86_64", "cuda")

ALL = {"llamacpp": True, "transformers": True, "vllm": True, "sglang": True, "mlx": True}

CASES = [
    # format, quant, architecture, machine, expected engine
    ("gguf", "Q4_K_M", "LlamaForCausalLM", LINUX_CUDA, "llamacpp"),
    ("gguf", "Q4_K_M", "LlamaForCausalLM", MAC_ARM, "llamacpp"),
    ("gguf", "Q8_0", "", LINUX_CPU, "llamacpp"),
    ("gguf", "Q4_K_M", "Qwen2ForCausalLM", WIN_CUDA, "llamacpp"),
    ("mlx", "4bit", "LlamaForCausalLM", MAC_ARM, "mlx"),
    ("mlx", "4bit", "LlamaForCausalLM", MAC_INTEL, None),
    ("mlx", "4bit", "LlamaForCausalLM", LINUX_CUDA, None),
    ("pytorch", "none", "LlamaForCausalLM", LINUX_CUDA, "vllm"),
    ("pytorch", "none", "Qwen2ForCausalLM", LINUX_CUDA, "vllm"),
    ("pytorch", "none", "Gemma3ForCausalLM", LINUX_CUDA, "vllm"),
    ("pytorch", "none", "Phi3ForCausalLM", LINUX_CUDA, "transformers"),   # not in the vLLM list
    ("pytorch", "none", "LlamaForCausalLM", LINUX_CPU, "transformers"),   # no CUDA
    ("pytorch", "none", "LlamaForCausalLM", LINUX_ROCM, "transformers"),  # ROCm is not CUDA
    ("pytorch", "none", "LlamaForCausalLM", WIN_CUDA, "transformers"),    # not Linux
    ("pytorch", "none", "LlamaForCausalLM", MAC_ARM, "transformers"),
    ("pytorch", "8-bit", "LlamaForCausalLM", LINUX_CUDA, "transformers"),  # quantized pytorch: not vLLM
    ("awq", "Int4", "Qwen2ForCausalLM", LINUX_CUDA, "vllm"),
    ("awq", "Int8", "Qwen2ForCausalLM", LINUX_CUDA, "transformers"),
    ("awq", "Int4", "Qwen2ForCausalLM", LINUX_CPU, None),
    ("gptq", "Int3", "LlamaForCausalLM", LINUX_CUDA, "vllm"),
    ("gptq", "Int4", "LlamaForCausalLM", LINUX_CUDA, "vllm"),
    ("gptq", "Int8", "MistralForCausalLM", LINUX_CUDA, "vllm"),
    ("gptq", "Int2", "LlamaForCausalLM", LINUX_CUDA, "transformers"),
    ("gptq", "Int4", "LlamaForCausalLM", WIN_CUDA, "transformers"),
    ("gptq", "Int4", "LlamaForCausalLM", MAC_ARM, None),
]


@pytest.mark.parametrize("fmt,quant,arch,hw,expected", CASES)
def test_seed_rules(fmt, quant, arch, hw, expected):
    spec = ModelSpec("m", fmt, quant, arch)
    sel = selection.select(spec, hw, installed=ALL)
    assert sel.engine == expected
    # every engine not chosen has a reason in words
    for engine in ("llamacpp", "transformers", "vllm", "sglang", "mlx"):
        if engine != sel.engine:
            assert sel.reasons.get(engine), f"no reason given for {engine}"


def test_vllm_list_is_the_seeds():
    archs = selection.vllm_architectures()
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "GptOssForCausalLM", "MiniMaxM2ForCausalLM"} <= archs
    assert "Phi3ForCausalLM" not in archs
    assert len(archs) == 31


def test_reasons_name_the_missing_condition():
    spec = ModelSpec("m", "pytorch", "none", "LlamaForCausalLM")
    assert "Linux" in selection.select(spec, WIN_CUDA, installed=ALL).reasons["vllm"]
    assert "CUDA" in selection.select(spec, LINUX_CPU, installed=ALL).reasons["vllm"]
    spec = ModelSpec("m", "pytorch", "none", "Phi3ForCausalLM")
    assert "Phi3ForCausalLM" in selection.select(spec, LINUX_CUDA, installed=ALL).reasons["vllm"]


def test_vllm_not_installed_falls_back_to_transformers_and_says_so():
    spec = ModelSpec("m", "pytorch", "none", "LlamaForCausalLM")
    sel = selection.select(spec, LINUX_CUDA, installed=dict(ALL, vllm=False))
    assert sel.engine == "transformers"
    assert "not installed" in sel.reasons["vllm"]


def test_sglang_only_when_asked_and_conditions_hold():
    spec = ModelSpec("m", "pytorch", "none", "LlamaForCausalLM")
    assert selection.select(spec, LINUX_CUDA, installed=ALL).engine == "vllm"
    assert selection.select(spec, LINUX_CUDA, "sglang", installed=ALL).engine == "sglang"
    refused = selection.select(spec, LINUX_CPU, "sglang", installed=ALL)
    assert refused.engine is None and "CUDA" in refused.reasons["sglang"]


def test_user_override_limited_to_engines_whose_conditions_hold():
    gguf = ModelSpec("m", "gguf", "Q4_K_M", "LlamaForCausalLM")
    assert selection.select(gguf, LINUX_CUDA, "vllm", installed=ALL).engine is None
    pt = ModelSpec("m", "pytorch", "none", "LlamaForCausalLM")
    assert selection.select(pt, LINUX_CUDA, "transformers", installed=ALL).engine == "transformers"


def test_mlx_on_request_elsewhere_warns_about_cpu():
    spec = ModelSpec("m", "mlx", "4bit", "LlamaForCausalLM")
    sel = selection.select(spec, LINUX_CPU, "mlx", installed=ALL)
    assert sel.engine == "mlx" and "CPU" in sel.warning
    assert selection.select(spec, LINUX_CPU, "mlx", installed=dict(ALL, mlx=False)).engine is None


def test_unknown_engine_is_an_error():
    with pytest.raises(ValueError, match="unknown engine"):
        selection.select(ModelSpec("m", "gguf", "Q4_K_M"), LINUX_CPU, "ollama")
