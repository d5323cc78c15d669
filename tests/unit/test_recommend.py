"""Recommended chat models per machine, from the catalog rows `ember models --json --hardware FILE` prints.

Profiles are FAKE machines with real shapes (tests/fixtures/hardware); the rows are
computed as the CLI does for ``--hardware`` (engines judged by the rules alone).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engines.chat.completion_mode import COMPLETION_NOTE
from engines.machine import speed
from engines.machine.hardware import GPU, HardwareProfile
from engines.models import catalog, recommend
from tests.helpers import FIXTURES, ROOT

PROFILES = ("cpu_laptop_8gb", "nvidia_24gb", "apple_m2_16gb", "nvidia_2gb_busy", "nvidia_2x12gb",
            "nvidia_cpu_build")


def _hw(name: str) -> HardwareProfile:
    return HardwareProfile.load(FIXTURES / f"{name}.json")


@pytest.fixture(scope="module")
def annotated() -> dict[str, list[dict]]:
    out = {}
    for name in PROFILES:
        hw = _hw(name)
        out[name] = recommend.annotate(catalog.rows(hw, installed=None), hw)
    return out


def _model(row: dict) -> dict:
    return catalog.entries()[row["name"]].model


@pytest.mark.parametrize("profile", PROFILES)
def test_one_to_three_recommended_that_fit_with_ranks_in_order(annotated, profile):
    rows = annotated[profile]
    picked = recommend.recommended(rows)
    assert 1 <= len(picked) <= 3
    assert [r["recommended_rank"] for r in picked] == list(range(1, len(picked) + 1))
    for r in picked:
        assert r["fit"] in ("gpu", "partial", "cpu") and r["format"] == "gguf" and not r["local"]
        assert "chat" in _model(r)["tags"]
        assert r["expected_tokens_per_second"] >= recommend.MIN_TOKENS_PER_SECOND
        assert "estimate" in r["recommended_because"]
    assert len({_model(r)["family"] for r in picked}) == len(picked)  # three different choices


@pytest.mark.parametrize("profile", PROFILES)
def test_a_model_that_does_not_fit_is_never_recommended(annotated, profile):
    for r in annotated[profile]:
        assert set(r) >= {"recommended", "recommended_rank", "expected_tokens_per_second"}
        if r["fit"] not in ("gpu", "partial", "cpu"):
            assert r["recommended"] is False and r["recommended_rank"] is None
            assert r["expected_tokens_per_second"] is None


def test_the_8gb_laptop_gets_a_model_that_fits_and_the_24gb_gpu_a_larger_one(annotated):
    laptop = recommend.recommended(annotated["cpu_laptop_8gb"])[0]
    gpu = recommend.recommended(annotated["nvidia_24gb"])[0]
    assert laptop["fit"] == "cpu"
    assert laptop["total_bytes"] <= recommend.RAM_HEADROOM * _hw("cpu_laptop_8gb").ram_total_bytes
    assert gpu["fit"] == "gpu"
    assert gpu["size_bytes"] > 2 * laptop["size_bytes"]
    assert _model(gpu)["quality_tier"] > _model(laptop)["quality_tier"]


def test_on_a_cpu_only_machine_a_big_model_is_kept_off_for_its_speed(annotated):
    rows = {r["name"]: r for r in annotated["cpu_laptop_8gb"]}
    big = rows["llama-3.1-8b-instruct-q4_k_m"]
    assert big["fit"] == "cpu"  # it fits in memory...
    assert big["expected_tokens_per_second"] < recommend.MIN_TOKENS_PER_SECOND  # ...but writes too slowly
    assert big["recommended"] is False
    faster = [r for r in recommend.recommended(annotated["cpu_laptop_8gb"])]
    assert all(r["expected_tokens_per_second"] > big["expected_tokens_per_second"] for r in faster)


def test_one_variant_per_model_and_q4_k_m_first(annotated):
    for profile in PROFILES:
        picked = recommend.recommended(annotated[profile])
        assert len({_model(r)["id"] for r in picked}) == len(picked)
        for r in picked:  # the model's Q4_K_M where it has one (Gemma 3's QAT builds are Q4_0 only)
            quants = {e.variant["quantization"] for e in catalog.entries().values()
                      if e.model["id"] == _model(r)["id"] and e.variant["format"] == "gguf"}
            if recommend.PREFERRED_QUANTIZATION in quants:
                assert r["quantization"] == recommend.PREFERRED_QUANTIZATION, (profile, r["name"])


def test_annotating_keeps_the_rows_and_their_order():
    hw = _hw("cpu_laptop_8gb")
    rows = catalog.rows(hw, installed=None)
    before = [(r["name"], r["fit"], r["reason"]) for r in rows]
    out = recommend.annotate(rows, hw)
    assert out is rows and [(r["name"], r["fit"], r["reason"]) for r in out] == before
    json.loads(json.dumps(out))  # what `ember models --json` prints


def test_every_catalog_model_has_a_quality_tier_and_moe_models_their_active_share():
    for entry in catalog.entries().values():
        m = entry.model
        assert m["quality_tier"] in (1, 2, 3, 4, 5), m["id"]
        if "moe" in (m.get("tags") or []):
            assert m["active_parameters"] > 0, m["id"]
            if m.get("parameters"):
                assert m["active_parameters"] < m["parameters"] / 2, m["id"]


# -- the speed estimate -----------------------------------------------------------------------------

def _machine(cores: int, gpus: list[GPU] | None = None, **kw) -> HardwareProfile:
    return HardwareProfile(os=kw.pop("os", "linux"), arch=kw.pop("arch", "x86_64"), cpu_cores=cores,
                           ram_total_bytes=16 * 2 ** 30, ram_available_bytes=12 * 2 ** 30, gpus=gpus or [], **kw)


def test_speed_follows_memory_bandwidth():
    two, eight = _machine(2), _machine(8)
    model = 5_000_000_000
    assert speed.estimate(model, two).tokens_per_second == pytest.approx(2 * 6e9 / model)
    assert speed.estimate(model, eight).tokens_per_second == pytest.approx(speed.CPU_MAX_BYTES / model)
    assert speed.estimate(2 * model, two).tokens_per_second == pytest.approx(
        speed.estimate(model, two).tokens_per_second / 2)
    assert "an estimate" in speed.estimate(model, two).summary()


def test_a_16gb_model_on_two_cores_crawls():
    assert speed.estimate(16 * 10 ** 9, _machine(2)).tokens_per_second < 1


def test_gpu_layers_and_experts_speed_it_up():
    gpu = GPU("NVIDIA GeForce RTX 4090", "nvidia", "cuda", 24 * 2 ** 30, 23 * 2 ** 30, "CUDA0")
    hw = _machine(8, [gpu])
    cpu_only = speed.estimate(10 ** 10, hw, gpu_share=0.0).tokens_per_second
    half = speed.estimate(10 ** 10, hw, gpu_share=0.5).tokens_per_second
    full = speed.estimate(10 ** 10, hw, gpu_share=1.0).tokens_per_second
    assert cpu_only < half < full
    assert speed.estimate(10 ** 10, hw, active_share=0.1).tokens_per_second == pytest.approx(10 * cpu_only)


def test_apple_silicon_bandwidth_by_chip():
    def tps(cpu_name):
        metal = GPU("Apple M2", "apple", "metal", 16 * 2 ** 30, 12 * 2 ** 30, "Metal")
        return speed.estimate(10 ** 10, _machine(8, [metal], os="darwin", arch="arm64", cpu_name=cpu_name,
                                                 apple_silicon=True), gpu_share=1.0).tokens_per_second
    assert tps("Apple M2") == pytest.approx(10.0)
    assert tps("Apple M2 Max") == pytest.approx(40.0)


def test_a_row_that_does_not_run_has_no_speed():
    hw = _machine(4)
    assert speed.estimate_row({"fit": "none", "weights_bytes": 10 ** 9}, hw) is None
    assert speed.estimate_row({"fit": "cpu", "weights_bytes": None}, hw) is None
    est = speed.estimate_row({"fit": "partial", "weights_bytes": 10 ** 9, "gpu_layers": 0, "total_layers": 10}, hw)
    assert est is not None and est.to_dict()["estimate"] is True


# -- `ember models` itself -----------------------------------------------------------------------------

def _ember_models(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "engines.cli", "models", *args], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def cli_rows(starter_path) -> dict[str, list[dict]]:
    return {name: json.loads(_ember_models("--json", "--hardware", str(FIXTURES / f"{name}.json")).stdout)
            for name in ("cpu_laptop_8gb", "nvidia_24gb")}


def test_ember_models_json_marks_a_fitting_model_on_the_laptop_and_a_larger_one_on_the_gpu(cli_rows):
    laptop, gpu = (recommend.recommended(cli_rows[name])[0] for name in ("cpu_laptop_8gb", "nvidia_24gb"))
    for rows in cli_rows.values():
        assert all(isinstance(r["recommended"], bool) and "recommended_rank" in r for r in rows)
        assert all(r["fit"] in recommend.RUNS for r in rows if r["recommended"])
    assert laptop["recommended_rank"] == 1 and laptop["fit"] == "cpu"
    assert laptop["total_bytes"] <= recommend.RAM_HEADROOM * _hw("cpu_laptop_8gb").ram_total_bytes
    assert gpu["recommended_rank"] == 1 and gpu["fit"] == "gpu"
    assert gpu["size_bytes"] > 2 * laptop["size_bytes"]


def test_ember_models_describes_the_starter_honestly(cli_rows):
    starter = next(r for r in cli_rows["cpu_laptop_8gb"] if r["name"] == "starter")
    assert starter["mode"] == "completion" and starter["mode_note"] == COMPLETION_NOTE
    assert "tiny offline demo" in starter["description"] and "does not follow instructions" in starter["description"]
    assert starter["recommended"] is False
    assert {r["mode"] for r in cli_rows["cpu_laptop_8gb"] if not r["local"]} == {"chat"}


def test_ember_models_marks_the_recommended_ones_for_people(starter_path):
    text = _ember_models("--hardware", str(FIXTURES / "cpu_laptop_8gb.json")).stdout
    lines = text.splitlines()
    first = next(l for l in lines if l.endswith("* recommended #1"))
    assert "CPU only" in first
    assert "Recommended chat models for this computer" in text
    starter = lines.index(next(l for l in lines if l.startswith("starter ")))
    assert "tiny offline demo" in lines[starter + 1] and "does not follow instructions" in lines[starter + 1]
