"""Auto-NGL: xllamacpp's Ollama-derived estimate, fed by Ember's fast GGUF header.

GPUs here are fakes (this machine has none), given in the exact dict shape that
xllamacpp.get_device_info() returns on a CUDA build.
"""
import os
import subprocess
import sys

import pytest

from engines.machine import fit
from engines.machine import gguf_info
from engines.running import backends
from engines.machine.hardware import GPU, HardwareProfile
from tests.conftest import ROOT

GiB, MiB = 1024 ** 3, 1024 ** 2


def profile(*free_bytes, backend="cuda", os_="linux", arch="x86_64"):
    gpus = [GPU(f"NVIDIA GeForce RTX 30{i}0 (fake)", "nvidia" if backend == "cuda" else "apple", backend,
                max(f, 1), f, ("CUDA%d" % i) if backend == "cuda" else "Metal")
            for i, f in enumerate(free_bytes)]
    return HardwareProfile(os_, arch, 8, 32 * GiB, 30 * GiB, gpus)


def ollama_dummy(tmp_path) -> gguf_info.GGUFInfo:
    """The model of Ollama's llm/memory_test.go: llama, 5 blocks of one f32 weight, an output weight."""
    meta = {"general.architecture": "llama", "llama.context_length": 32, "llama.embedding_length": 4096,
            "llama.block_count": 5, "llama.attention.head_count": 32, "llama.attention.head_count_kv": 32,
            "tokenizer.ggml.tokens": [" "]}
    tensors = [gguf_info.TensorInfo(f"blk.{i}.attn.weight", [1, 1, 1, 1], 0, 0, 4) for i in range(5)]
    tensors.append(gguf_info.TensorInfo("output.weight", [1, 1, 1, 1], 0, 0, 4))
    return gguf_info.GGUFInfo(tmp_path / "dummy.gguf", 1024, meta, tensors)


# Ollama's memory_test.go, dual CUDA with asymmetry: (room for layers on GPU0, GPU1) -> layers placed.
GRAPH_PARTIAL, GRAPH_FULL = 202377216, 171968512
LAYER_SIZE, OUTPUT_SIZE, MIN_MEMORY = 33554436, 4, 2048


@pytest.mark.parametrize("layer0,layer1,expect0,expect1", [
    (1, 1, 1, 1), (2, 1, 2, 1), (2, 2, 2, 2), (1, 2, 1, 2),
    (3, 3, 3, 3), (4, 4, 3, 3), (6, 6, 3, 3), (0, 3, 0, 3),
])
def test_ollama_two_gpu_table(tmp_path, layer0, layer1, expect0, expect1):
    info = ollama_dummy(tmp_path)
    free = [0, 0]
    free[0 if layer0 else 1] += OUTPUT_SIZE
    free[0] += MIN_MEMORY + LAYER_SIZE + layer0 * LAYER_SIZE + 1 + max(GRAPH_FULL, GRAPH_PARTIAL)
    free[1] += MIN_MEMORY + LAYER_SIZE + layer1 * LAYER_SIZE + 1 + max(GRAPH_FULL, GRAPH_PARTIAL)
    hw = profile(*free)
    for g in hw.gpus:
        g.memory_total_bytes = g.memory_free_bytes
    # Ollama's test sets a 2 KiB minimum per GPU; pass it the way xllamacpp reads it.
    from engines.machine import hardware
    orig = hardware.llamacpp_device_dicts
    devices = [dict(d, memory_min=MIN_MEMORY) for d in orig(hw)]
    fit_mod_devices = fit.llamacpp_device_dicts
    try:
        fit.llamacpp_device_dicts = lambda _hw: [dict(d) for d in devices]
        est = fit.estimate(info, hw, n_ctx=2048, n_parallel=1)
    finally:
        fit.llamacpp_device_dicts = fit_mod_devices
    assert est.gpu_layers == expect0 + expect1
    assert est.tensor_split == [expect0, expect1]
    assert est.fit == ("gpu" if est.gpu_layers == 6 else "partial" if est.gpu_layers else "cpu")
    if est.gpu_layers < 6:
        assert est.vram_bytes < est.total_bytes
    assert est.vram_bytes == sum(est.gpu_bytes)


def test_cpu_only_machine_runs_all_layers_on_cpu(starter_path):
    info = gguf_info.read(starter_path)
    est = fit.estimate(info, profile(), n_ctx=4096)
    assert (est.n_gpu_layers, est.fit, est.total_layers) == (0, "cpu", 19)
    assert "CPU only" in est.summary()


def test_gpu_too_small_for_one_layer(starter_path):
    est = fit.estimate(gguf_info.read(starter_path), profile(300 * MiB), n_ctx=4096)
    assert est.gpu_layers == 0 and est.fit == "cpu"


def test_big_gpu_takes_every_layer(starter_path):
    est = fit.estimate(gguf_info.read(starter_path), profile(8 * GiB), n_ctx=4096)
    assert est.gpu_layers == est.total_layers == 19 and est.fit == "gpu"
    assert 0 < est.vram_bytes <= 8 * GiB


def test_partial_offload_grows_with_free_memory(starter_path):
    info = gguf_info.read(starter_path)
    layers = [fit.estimate(info, profile(mib * MiB), n_ctx=4096).gpu_layers for mib in (1100, 1200, 1300, 1500)]
    assert layers == sorted(layers)
    assert any(0 < n < 19 for n in layers), layers


def test_bigger_context_means_bigger_kv_cache(starter_path):
    info = gguf_info.read(starter_path)
    small = fit.estimate(info, profile(8 * GiB), n_ctx=2048).kv_cache_bytes
    big = fit.estimate(info, profile(8 * GiB), n_ctx=32768).kv_cache_bytes
    q8 = fit.estimate(info, profile(8 * GiB), n_ctx=32768, cache_type="q8_0").kv_cache_bytes
    # q8_0 keeps 32 values in 34 bytes, f16 in 64 (llama.cpp's log: 3.19 MiB against 6.00 MiB)
    assert small < big and q8 == pytest.approx(big * 34 / 64, abs=1)


def test_estimate_failure_falls_back_to_all_layers(tmp_path):
    info = gguf_info.GGUFInfo(tmp_path / "x.gguf", 10, {"general.architecture": "llama"}, [])  # no block_count...
    est = fit.estimate(info, profile(8 * GiB), n_ctx=4096)
    assert est.n_gpu_layers == fit.ALL_LAYERS and est.fallback


def test_embedded_projector_is_ignored(starter_path, monkeypatch):
    """The seed: projectors embedded in the GGUF are not supported by auto-NGL; the estimate gets none."""
    seen = {}
    from xllamacpp import memory
    real = memory.estimate_gpu_layers

    def spy(gpus, model_path, projectors, *args):
        seen["projectors"] = projectors
        return real(gpus, model_path, projectors, *args)

    monkeypatch.setattr(memory, "estimate_gpu_layers", spy)
    info = gguf_info.read(starter_path)
    info.tensors.append(gguf_info.TensorInfo("mm.input_projection.weight", [640, 640], 1, 0, 640 * 640 * 2))
    assert info.has_vision
    fit.estimate(info, profile(8 * GiB), n_ctx=4096)
    assert seen["projectors"] == []


def test_metal_device_is_passed_under_the_name_the_estimate_expects(starter_path):
    hw = profile(12 * GiB, backend="metal", os_="darwin", arch="arm64")
    hw.gpus[0].llamacpp_device = "MTL0"
    est = fit.estimate(gguf_info.read(starter_path), hw, n_ctx=4096)
    assert est.devices[0]["name"] == "Metal" and est.fit == "gpu"


def test_prepare_passes_the_estimate_explicitly(starter_spec):
    values, est, _ = backends.get("llamacpp").prepare(starter_spec, profile(1200 * MiB), {})
    assert values["n_gpu_layers"] == est.n_gpu_layers
    values, est, _ = backends.get("llamacpp").prepare(starter_spec, profile(1200 * MiB), {"n_gpu_layers": 5})
    assert values["n_gpu_layers"] == 5 and est is None


def test_two_gpus_get_a_tensor_split(starter_spec):
    values, est, _ = backends.get("llamacpp").prepare(starter_spec, profile(8 * GiB, 8 * GiB), {})
    assert sum(values["tensor_split"]) == est.gpu_layers


REAL_LOG = """\
0.01.278.586 I load_tensors:   CPU_Mapped model buffer size =   235.16 MiB
0.01.278.612 I load_tensors:   CPU_REPACK model buffer size =    12.66 MiB
0.01.300.841 I llama_context: n_ctx                 = 2048
0.01.304.364 I llama_kv_cache: size =    6.00 MiB (  2048 cells,   3 layers,  1/1 seqs), K (f16):    3.00 MiB, V (f16):    3.00 MiB
0.01.315.729 I llama_kv_cache: size =   15.00 MiB (  1024 cells,  15 layers,  1/1 seqs), K (f16):    7.50 MiB, V (f16):    7.50 MiB
0.01.318.285 I sched_reserve:        CPU compute buffer size =    21.28 MiB
0.01.361.961 I srv    load_model: initializing, n_slots = 1, n_ctx_slot = 2048, kv_unified = 'false'
load_tensors: offloaded 19/19 layers to GPU
load_tensors:        CUDA0 model buffer size =   235.16 MiB
"""


def test_parse_loaded_reads_what_the_engine_did():
    r = fit.parse_loaded(REAL_LOG.splitlines())
    assert (r.n_ctx, r.n_slots, r.n_ctx_slot) == (2048, 1, 2048)
    assert r.kv_cache_mib == pytest.approx(21.0)
    assert (r.gpu_layers, r.total_layers) == (19, 19)
    assert r.model_buffers_mib["CUDA0"] == pytest.approx(235.16)
    assert "19/19 layers on GPU" in r.summary()


NO_GGUF_SCRIPT = """
import sys
from engines.machine import fit, gguf_info
from engines.machine.hardware import GPU, HardwareProfile
hw = HardwareProfile("linux", "x86_64", 8, 32 << 30, 30 << 30,
                     [GPU("fake", "nvidia", "cuda", 8 << 30, 8 << 30, "CUDA0")])
info = gguf_info.read(sys.argv[1])
est = fit.estimate(info, hw, n_ctx=4096)
print(est.fallback, est.gpu_layers, info.quantization, sorted({"gguf", "numpy"} & set(sys.modules)))
"""


def test_estimate_never_imports_gguf_or_numpy(starter_path):
    """The desktop bundle leaves gguf and numpy out: the header and the estimate must not need them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", NO_GGUF_SCRIPT, str(starter_path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "19", "Q4_K_M", "[]"]
