"""Checks on the curated catalog file resources/models.json and its JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "resources" / "models.json"
SCHEMA = ROOT / "resources" / "models.schema.json"

FORMATS = {"gguf", "pytorch", "awq", "gptq", "mlx"}
GPTQ_QUANTS = {"Int3", "Int4", "Int8"}


@pytest.fixture(scope="module")
def catalog() -> dict:
    return json.loads(CATALOG.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def models(catalog: dict) -> list[dict]:
    return catalog["models"]


def _variants(models: list[dict]):
    for model in models:
        for variant in model["variants"]:
            yield model, variant


def test_validates_against_schema(catalog: dict, schema: dict) -> None:
    try:
        import jsonschema
    except ImportError:  # small structural fallback
        assert catalog["schema_version"] == 2
        for model in catalog["models"]:
            for key in ("id", "display_name", "architecture", "variants"):
                assert key in model, (model.get("id"), key)
            for variant in model["variants"]:
                for key in ("id", "format", "quantization", "repo"):
                    assert key in variant, (variant.get("id"), key)
        return
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(catalog), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:20])


def test_schema_rejects_a_broken_entry(schema: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    bad = {"schema_version": 2, "models": [{"id": "x", "display_name": "X", "architecture": "A",
           "variants": [{"id": "x-awq", "format": "awq", "quantization": "Int8", "repo": "a/b"}]}]}
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(bad))


def test_enough_models(models: list[dict]) -> None:
    assert len(models) >= 30


def test_model_ids_unique_and_lowercase(models: list[dict]) -> None:
    ids = [m["id"] for m in models]
    assert len(ids) == len(set(ids))
    for mid in ids:
        assert mid == mid.lower()
        assert set(mid) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-"), mid


def test_variant_ids_unique(models: list[dict]) -> None:
    ids = [v["id"] for _, v in _variants(models)]
    assert len(ids) == len(set(ids))


def test_variant_formats_allowed(models: list[dict]) -> None:
    for model, variant in _variants(models):
        assert variant["format"] in FORMATS, (model["id"], variant["id"])


def test_gguf_variants_list_gguf_files(models: list[dict]) -> None:
    for model, variant in _variants(models):
        if variant["format"] == "gguf":
            files = [f["name"] for f in variant.get("files") or []]
            assert files and all(f.endswith(".gguf") for f in files), (model["id"], variant["id"])


def test_quantization_matches_format(models: list[dict]) -> None:
    for model, variant in _variants(models):
        fmt, quant = variant["format"], variant["quantization"]
        where = (model["id"], variant["id"])
        if fmt == "awq":
            assert quant == "Int4", where
        elif fmt == "gptq":
            assert quant in GPTQ_QUANTS, where
        elif fmt == "pytorch":
            assert quant == "none", where


def test_every_model_has_original_weights(models: list[dict]) -> None:
    for model in models:
        assert any(v["format"] == "pytorch" for v in model["variants"]), model["id"]


def test_kv_heads_divide_heads(models: list[dict]) -> None:
    for model in models:
        att = model.get("attention") or {}
        heads, kv = att.get("head_count"), att.get("head_count_kv")
        if heads is not None and kv is not None:
            assert heads % kv == 0, model["id"]


def test_sizes_are_positive(models: list[dict]) -> None:
    for model, variant in _variants(models):
        for key in ("size_bytes", "size_gb_approx"):
            if key in variant:
                assert variant[key] > 0, (model["id"], variant["id"], key)
