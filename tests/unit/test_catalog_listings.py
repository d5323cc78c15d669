"""The catalog's GGUF files match public listings of their repositories: exact sizes, cited sources.

resources/hub_listings.json records, per source (a file in another project's
repository at a pinned git revision), the files that source lists for each
repository. A download fails when the catalog names a file the Hub does not
have, and a fit or a disk check is only as good as the sizes behind it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engines.models import catalog, listings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads((ROOT / "resources" / "models.json").read_text(encoding="utf-8"))


def _gguf(shipped: dict):
    for m in shipped["models"]:
        for v in m["variants"]:
            if v["format"] == "gguf":
                yield m, v


def test_every_gguf_variant_has_its_exact_size(shipped):
    for m, v in _gguf(shipped):
        where = (m["id"], v["id"])
        assert isinstance(v.get("size_bytes"), int) and v["size_bytes"] > 0, where
        sizes = [f.get("size_bytes") for f in v["files"]]
        if all(s is not None for s in sizes):
            assert sum(sizes) == v["size_bytes"], where
        else:  # a split file whose listing gives only the total: every part is named, the total is exact
            assert len(v["files"]) > 1, where


def test_every_gguf_variant_cites_a_source_with_an_address_and_a_pinned_revision(shipped):
    sources = listings.recorded()["sources"]
    for m, v in _gguf(shipped):
        assert v.get("listings"), (m["id"], v["id"])
        for sid in v["listings"]:
            src = sources[sid]
            assert src["url"].startswith("https://github.com/") and src["revision"] in src["url"], sid
            assert re.fullmatch(r"[0-9a-f]{40}", src["revision"]), sid


def test_every_catalog_file_appears_in_the_listing_it_cites(shipped):
    """The repo/file pair, its size and (where given) its sha256, as a cited listing records them."""
    for m, v in _gguf(shipped):
        names = [f["name"] for f in v["files"]]
        found_size = found_total = False
        for sid in v["listings"]:
            listed = listings.recorded_files(sid, v["repo"])
            assert listed, f"{sid} does not list {v['repo']} ({v['id']})"
            for f in v["files"]:
                row = listed.get(f["name"])
                if row is None:
                    continue
                if row.get("sha256") and f.get("sha256"):
                    assert row["sha256"] == f["sha256"], (v["id"], f["name"], sid)
                if row.get("size_bytes") is not None:
                    assert row["size_bytes"] == f["size_bytes"], (v["id"], f["name"], sid)
                    found_size = True
            split = listed.get(" + ".join(names)) if len(names) > 1 else None
            if split:
                assert split["parts"] == names and split["size_bytes"] == v["size_bytes"], v["id"]
                found_total = True
        assert found_size or found_total, f"no cited listing gives the size of {v['id']}"


def test_file_names_keep_the_hubs_case_and_split_parts_are_complete(shipped):
    for m, v in _gguf(shipped):
        names = [f["name"] for f in v["files"]]
        parts = [re.search(r"-(\d{5})-of-(\d{5})\.gguf$", n) for n in names]
        if any(parts):
            assert all(parts), v["id"]
            assert [int(p[1]) for p in parts] == list(range(1, len(names) + 1)), v["id"]
            assert {int(p[2]) for p in parts} == {len(names)}, v["id"]


def test_the_listings_file_has_no_source_nobody_cites(shipped):
    cited = {sid for _, v in _gguf(shipped) for sid in v["listings"]}
    assert set(listings.recorded()["sources"]) == cited


def test_no_sliding_window_as_long_as_the_context(shipped):
    """A 'window' of 262,144 tokens on a 131,072-token model is full attention: the KV estimate must say so."""
    for m in shipped["models"]:
        sw = (m.get("attention") or {}).get("sliding_window")
        if sw is not None:
            assert sw < m["context_length"], m["id"]
    phi = catalog.resolve("phi-3.5-mini-instruct-q4_k_m")
    info, _ = catalog.synthetic_info(phi)
    assert "phi3.attention.sliding_window" not in info.metadata


def test_the_fit_uses_the_trained_context_and_keeps_the_configs_maximum(shipped):
    nemo = next(m for m in shipped["models"] if m["id"] == "mistral-nemo-instruct-2407")
    assert nemo["context_length"] == 131072 < nemo["config_context_length"]
    spec = catalog.resolve("mistral-nemo-instruct-2407-pytorch")
    assert spec.context_length == 131072
    for m in shipped["models"]:
        if m.get("config_context_length"):
            assert m["config_context_length"] > m["context_length"], m["id"]


def test_new_families_are_there_with_tiers_and_moe_shares(shipped):
    ids = {m["id"]: m for m in shipped["models"]}
    for mid in ("qwen3-4b-instruct-2507", "qwen3-30b-a3b-instruct-2507", "qwen3-coder-30b-a3b-instruct",
                "deepseek-r1-0528-qwen3-8b", "gemma-3-270m-it", "qwen3.5-4b", "gemma-4-e4b-it", "smollm3-3b",
                "ministral-3-3b-instruct-2512"):
        m = ids[mid]
        assert m["quality_tier"] in (1, 2, 3, 4, 5) and m["sources"], mid
        assert any(v["format"] == "gguf" for v in m["variants"]), mid
        if "moe" in m["tags"]:
            assert 0 < m["active_parameters"] < m["parameters"] / 2, mid
