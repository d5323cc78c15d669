"""One name, any model (engines.models.lookup), and the download records the catalog reads.

The store knows only local models; the catalog's downloadable variants come in
through lookup.resolve, and a variant gets its path from the records of
verified downloads. Real files: the starter GGUF under a temporary EMBER_HOME.
"""
from __future__ import annotations

import shutil

import pytest

from engines.models import catalog, lookup, records, store

VARIANT = "qwen3-0.6b-q4_k_m"


def test_a_local_name_comes_from_the_store(fresh_home, starter_path, tmp_path):
    copy = tmp_path / "mine.gguf"
    shutil.copy(starter_path, copy)
    added = store.add_local(copy)
    spec = lookup.resolve(added.name)
    assert spec.source == "local" and spec.path == str(copy)
    assert lookup.resolve("starter").source == "starter"


def test_a_catalog_variant_comes_from_the_catalog_without_a_path_until_downloaded(fresh_home):
    spec = lookup.resolve(VARIANT)
    assert spec.source == "catalog" and spec.name == VARIANT and spec.path is None
    assert spec.repo and spec.files
    with pytest.raises(store.ModelError) as info:
        store.resolve_local(VARIANT)  # the store alone does not know the catalog
    assert info.value.kind == "unknown"


def test_an_unknown_name_says_what_is_close(fresh_home):
    with pytest.raises(store.ModelError) as info:
        lookup.resolve("startr")
    assert info.value.kind == "unknown" and "did you mean starter?" in info.value.problem


def test_a_path_that_is_not_a_model_keeps_its_own_problem(fresh_home, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(store.ModelError) as info:
        lookup.resolve(str(bad))
    assert info.value.kind != "unknown"


def test_a_verified_download_gives_the_variant_its_path_until_the_file_changes(fresh_home, starter_path, tmp_path):
    path = tmp_path / "model.gguf"
    shutil.copy(starter_path, path)
    size = path.stat().st_size
    records.save(VARIANT, "Qwen/repo", "abc123", str(path),
                 [records.FileRecord("model.gguf", size, "0" * 64, str(path), str(path))])
    assert records.ready_path(VARIANT) == str(path) == lookup.resolve(VARIANT).path
    assert records.ready_map() == {VARIANT: str(path)}
    assert catalog.resolve(VARIANT).path == str(path)
    with open(path, "r+b") as f:
        f.truncate(size - 1)  # a file that shrank is no longer a verified download
    assert records.ready_path(VARIANT) is None and lookup.resolve(VARIANT).path is None
    assert [d["ok"] for d in records.downloaded()] == [False]


def test_deleting_a_download_frees_its_bytes_once(fresh_home, tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 1000)
    link = tmp_path / "link.gguf"
    link.symlink_to(blob)
    records.save(VARIANT, "Qwen/repo", "abc123", str(link),
                 [records.FileRecord("link.gguf", 1000, None, str(link), str(blob))])
    assert records.delete(VARIANT) == 1000
    assert not blob.exists() and not link.exists() and records.ready_path(VARIANT) is None
    assert records.delete(VARIANT) == 0
