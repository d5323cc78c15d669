"""Fit tables: the catalog on FAKE hardware profiles (tests/fixtures/hardware/*.json, real shapes).

Engines are judged by the rules alone (installed=None), as for another machine's profile.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from engines.models import catalog
from engines.machine import fit as F
from engines.machine import hardware
from tests.conftest import ember_cmd

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "hardware"


def _hw(name: str) -> hardware.HardwareProfile:
    return hardware.HardwareProfile.load(FIX / f"{name}.json")


@pytest.fixture(scope="module")
def tables() -> dict[str, dict[str, dict]]:
    out = {}
    for name in ("cpu_laptop_8gb", "nvidia_24gb", "nvidia_2x12gb", "apple_m2_16gb"):
        out[name] = {r["name"]: r for r in catalog.catalog_rows(_hw(name), installed=None)}
    return out


def test_every_catalog_variant_is_served(tables):
    n = sum(len(m["variants"]) for m in json.loads(
        (Path(catalog.__file__).parents[2] / "resources" / "models.json").read_text())["models"])
    for rows in tables.values():
        assert len(rows) == n
        assert all(r["fit"] in catalog.FITS for r in rows.values())


def _expected_layers(variant: str, hw: hardware.HardwareProfile) -> int:
    spec = catalog.resolve(variant)
    info, _ = catalog.synthetic_info(spec)
    return F.estimate(info, hw, catalog.default_context(spec)).gpu_layers


@pytest.mark.parametrize("profile", ["nvidia_24gb", "nvidia_2x12gb"])
def test_a_32gb_gguf_is_partial_on_24gb_with_the_estimates_layer_count(tables, profile):
    r = tables[profile]["qwen3-30b-a3b-instruct-2507-q8_0"]
    assert r["engine"] == "llamacpp" and r["fit"] == "partial"
    assert r["total_layers"] == 49
    assert r["gpu_layers"] == _expected_layers("qwen3-30b-a3b-instruct-2507-q8_0", _hw(profile))
    assert 20 < r["gpu_layers"] < 45  # ~32 GB of weights, ~22 GB of GPU memory
    assert f"{r['gpu_layers']} of 49 layers on GPU" in r["reason"]
    assert r["badge"] == f"Partly on the GPU ({r['gpu_layers']} of 49 layers)"
    # the numbers behind it: the file's exact size, not an estimate
    assert abs(r["weights_bytes"] - catalog.resolve("qwen3-30b-a3b-instruct-2507-q8_0").size_bytes) < 1024
    assert r["weights_source"] == catalog.EXACT and r["size_exact"]
    assert r["kv_cache_bytes"] == 48 * 4096 * 4 * (128 + 128) * 2  # f16 K+V, every layer, 4096 tokens


def test_two_gpus_split_the_layers(tables):
    est = tables["nvidia_2x12gb"]["qwen3-30b-a3b-instruct-2507-q8_0"]["estimate"]
    assert len(est["gpu_bytes"]) == 2 and all(b > 0 for b in est["gpu_bytes"])


def test_a_32gb_gguf_does_not_fit_the_8gb_laptop(tables):
    r = tables["cpu_laptop_8gb"]["qwen3-30b-a3b-instruct-2507-q8_0"]
    assert r["engine"] == "llamacpp" and r["fit"] == "none"
    assert "this computer has 7.7 GiB of RAM and GPU memory together" in r["reason"]
    assert r["badge"] == "Does not fit in memory"


def test_small_gguf_runs_on_the_laptop_cpu_and_fully_on_gpus(tables):
    assert tables["cpu_laptop_8gb"]["deepseek-r1-0528-qwen3-8b-q4_k_m"]["fit"] == "cpu"
    for profile in ("nvidia_24gb", "nvidia_2x12gb", "apple_m2_16gb"):
        r = tables[profile]["deepseek-r1-0528-qwen3-8b-q4_k_m"]
        assert r["fit"] == "gpu" and r["gpu_layers"] == r["total_layers"] == 37, profile


def test_an_unknown_file_size_is_estimated_and_says_so():
    spec = catalog.resolve("deepseek-r1-0528-qwen3-8b-q4_k_m")
    exact, how = catalog.estimated_gguf_size(spec)
    assert (exact, how) == (spec.size_bytes, catalog.EXACT)
    spec.size_bytes = None
    guess, how = catalog.estimated_gguf_size(spec)
    assert how.startswith("estimated") and abs(guess - exact) < 0.1 * exact
    r = catalog.row(spec, _hw("nvidia_24gb"), installed=None)
    assert r["weights_source"].startswith("estimated") and not r["size_exact"]


def test_mlx_picks_mlx_only_on_apple_silicon(tables):
    for profile, rows in tables.items():
        r = rows["llama-3.1-8b-instruct-mlx-4bit"]
        if profile == "apple_m2_16gb":
            assert r["engine"] == "mlx" and r["fit"] == "gpu"
        else:
            assert r["engine"] is None and r["fit"] == "unavailable"
            assert "MLX is chosen on Apple silicon Macs" in r["reasons"]["mlx"]


def test_awq_qwen2_picks_vllm_only_on_linux_with_cuda(tables):
    for profile, rows in tables.items():
        r = rows["qwen2.5-7b-instruct-awq-int4"]
        assert r["architecture"] == "Qwen2ForCausalLM"
        if profile in ("nvidia_24gb", "nvidia_2x12gb"):
            assert r["engine"] == "vllm" and r["fit"] == "gpu"
        else:
            assert r["engine"] is None and r["fit"] == "unavailable"
    assert "vLLM needs Linux; this is darwin" in tables["apple_m2_16gb"]["qwen2.5-7b-instruct-awq-int4"]["reasons"]["vllm"]


def test_vllm_refuses_what_does_not_fit_in_vram(tables):
    r = tables["nvidia_24gb"]["qwen2.5-72b-instruct-pytorch"]
    assert r["engine"] == "vllm" and r["fit"] == "none"
    assert "vLLM keeps the whole model on the GPU" in r["reason"]


def test_missing_facts_say_unknown_not_a_guess(tables):
    r = tables["nvidia_24gb"]["qwen3.5-4b-q4_k_m"]  # its architecture is not checked yet: no shape in the catalog
    assert r["fit"] == "unknown" and r["weights_bytes"] is None
    assert "the catalog lacks its GGUF architecture" in r["reason"]


def test_sorted_and_filtered_by_fit():
    rows = catalog.rows(_hw("nvidia_24gb"), installed=None, fits=True)
    assert rows and all(r["fit"] in ("gpu", "partial", "cpu") for r in rows)
    order = ["gpu", "partial", "cpu"]
    ranks = [order.index(r["fit"]) for r in rows]
    assert ranks == sorted(ranks)


def test_resolve_gives_a_catalog_spec():
    spec = catalog.resolve("qwen3-30b-a3b-instruct-2507-q8_0")
    assert spec.source == "catalog" and spec.format == "gguf" and spec.block_count == 48
    assert spec.repo and spec.files and spec.path is None
    assert catalog.resolve("deepseek-r1-0528-qwen3-8b").name == "deepseek-r1-0528-qwen3-8b-q4_k_m"
    with pytest.raises(LookupError):
        catalog.resolve("no-such-model")


def test_fit_of_the_whole_catalog_is_fast_after_the_first_time():
    """Printed, not asserted (speed targets live in bench/catalog_fit.py)."""
    catalog.clear_cache()
    hw = _hw("nvidia_2x12gb")
    t0 = time.perf_counter()
    catalog.catalog_rows(hw, installed=None)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = catalog.catalog_rows(hw, installed=None)
    again = time.perf_counter() - t0
    print(f"\ncatalog fit: {len(rows)} variants, first {first * 1000:.1f} ms, cached {again * 1000:.2f} ms")
    assert len(rows) > 150


def test_cli_models_json_on_a_profile():
    out = subprocess.run(ember_cmd("models", "--json", "--hardware", str(FIX / "nvidia_24gb.json")),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    r = rows["qwen3-30b-a3b-instruct-2507-q8_0"]
    for key in ("name", "format", "quantization", "architecture", "engine", "fit", "gpu_layers", "total_layers",
                "reason"):
        assert key in r
    assert r["fit"] == "partial" and r["engine"] == "llamacpp"
    assert rows["qwen2.5-7b-instruct-awq-int4"]["engine"] == "vllm"


# -- a hand-written profile (as in the README): llamacpp_device left out ------------------------------

README_PROFILE = {"os": "linux", "arch": "x86_64", "cpu_cores": 16, "ram_total_bytes": 68719476736,
                  "ram_available_bytes": 60000000000,
                  "gpus": [{"name": "NVIDIA GeForce RTX 4090", "vendor": "nvidia", "backend": "cuda",
                            "memory_total_bytes": 25757220864, "memory_free_bytes": 24000000000}]}


def _profile_rows(gpu_extra: dict) -> dict[str, dict]:
    data = json.loads(json.dumps(README_PROFILE))
    data["gpus"][0].update(gpu_extra)
    return {r["name"]: r for r in catalog.catalog_rows(hardware.HardwareProfile.from_dict(data), installed=None)}


def test_a_readme_profile_without_llamacpp_device_gets_gpu_badges_on_a_24gb_card(tmp_path):
    path = tmp_path / "rtx4090.json"
    path.write_text(json.dumps(README_PROFILE))
    hw = hardware.HardwareProfile.load(path)
    assert [g.llamacpp_device for g in hw.gpus] == ["CUDA0"]
    out = subprocess.run(ember_cmd("models", "--json", "--hardware", str(path)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    r = rows["deepseek-r1-0528-qwen3-8b-q4_k_m"]
    assert r["fit"] == "gpu" and r["badge"] == "Fits on your GPU"
    assert rows["qwen3-30b-a3b-instruct-2507-q8_0"]["fit"] == "partial"
    assert not any("CPU only: no GPU that llama.cpp can use" in str(x["reason"]) for x in rows.values())


def test_the_same_profile_with_an_explicit_null_runs_on_the_cpu_only():
    rows = _profile_rows({"llamacpp_device": None})
    fits = {r["fit"] for r in rows.values() if r["format"] == "gguf"}
    assert "gpu" not in fits and "partial" not in fits
    assert rows["deepseek-r1-0528-qwen3-8b-q4_k_m"]["fit"] == "cpu"


def test_gpus_without_a_device_name_are_numbered_per_backend_as_llamacpp_does():
    data = json.loads(json.dumps(README_PROFILE))
    data["gpus"] = [dict(README_PROFILE["gpus"][0]), dict(README_PROFILE["gpus"][0]),
                    {**README_PROFILE["gpus"][0], "llamacpp_device": None}]
    hw = hardware.HardwareProfile.from_dict(data)
    assert [g.llamacpp_device for g in hw.gpus] == ["CUDA0", "CUDA1", None]
    mac = hardware.HardwareProfile.from_dict({"os": "darwin", "arch": "arm64", "cpu_cores": 8,
                                              "ram_total_bytes": 17179869184, "ram_available_bytes": 12000000000,
                                              "gpus": [{"name": "Apple M2", "vendor": "apple", "backend": "metal",
                                                        "memory_total_bytes": 12884901888,
                                                        "memory_free_bytes": 12000000000}]})
    assert mac.gpus[0].llamacpp_device == "Metal"
    # what `ember doctor --json` writes keeps the real value, null included
    again = hardware.HardwareProfile.from_dict(hw.to_dict())
    assert [g.llamacpp_device for g in again.gpus] == ["CUDA0", "CUDA1", None]
