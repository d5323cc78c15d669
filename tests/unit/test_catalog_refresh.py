"""`ember models --refresh` and catalog.refresh against the local FAKE hub (this machine cannot reach the real one).

The fake hub serves small files under the names of catalog repositories; every
other catalog repository answers 404, as a moved or deleted one would.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from engines.models import catalog, listings
from tests.conftest import ember_cmd
from tests.fakehub.server import FakeHub

SIZED = "llama-3.1-8b-instruct-q4_k_m"      # served with other bytes: a new size
RENAMED = "smollm2-1.7b-instruct-q8_0"      # served under another spelling of its name
GATED = "gemma-3-270m-it-qat-q4_0"          # its repository answers 403 (gated)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake hub with three catalog repositories changed, Ember's data folder fresh, the catalog re-read."""
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    h = FakeHub().start()
    for k, v in h.environ(tmp_path / "hf-cache").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sized, renamed, gated = (catalog.resolve(n) for n in (SIZED, RENAMED, GATED))
    blob = tmp_path / "blob.gguf"
    blob.write_bytes(b"GGUF" + b"\0" * 4092)
    h.add(sized.repo, sized.files[0], blob)
    h.add(renamed.repo, renamed.files[0].replace("Q8_0", "q8_0"), blob)
    h.add(gated.repo, gated.files[0], blob)
    h.repos[gated.repo].gated = True
    catalog.reload()
    yield h
    h.stop()
    catalog.reload()


def _changes(result, name):
    return [c for c in result.changes if c.variant == name]


def test_refresh_picks_up_new_sizes_and_renamed_files(hub):
    before = catalog.resolve(SIZED).size_bytes
    result = catalog.refresh()
    assert SIZED in {c.variant for c in result.changes}
    assert {c.kind for c in _changes(result, SIZED)} == {"size", "sha256"}  # other bytes: another sha256 too
    assert f"{before:,} bytes -> 4,096" in _changes(result, SIZED)[0].detail
    after = catalog.resolve(SIZED)
    assert after.size_bytes == 4096
    renamed = catalog.resolve(RENAMED)
    assert renamed.files == ["SmolLM2-1.7B-Instruct-q8_0.gguf"]  # the download asks for the name the Hub has
    assert _changes(result, RENAMED)[0].kind == "renamed"
    # the fit rests on the new size and the row says where it came from
    row = next(r for r in catalog.catalog_rows(_hw(), installed=None) if r["name"] == SIZED)
    assert row["size_bytes"] == 4096 and row["hub_listed_at"] and row["size_exact"]


def test_a_listing_error_is_reported_and_the_old_catalog_kept(hub):
    shipped = catalog.resolve(GATED)
    result = catalog.refresh()
    assert "gated" in result.failed[catalog.resolve(GATED).repo]
    assert "not on the Hub" in result.failed[catalog.resolve("gpt-oss-20b-mxfp4").repo]
    again = catalog.resolve(GATED)
    assert (again.files, again.size_bytes) == (shipped.files, shipped.size_bytes)
    assert not result.ok and "could not list" in result.summary()


def test_the_saved_listing_is_used_offline_and_reused_within_a_day(hub, monkeypatch):
    catalog.refresh()
    assert listings.cache_path().exists()
    hub.reset_counts()
    result = catalog.refresh(max_age=listings.DAY_S)  # within a day: nothing is asked again
    assert SIZED in {c.variant for c in result.changes}
    assert not [r for r in hub.requests if catalog.resolve(SIZED).repo in r]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.stop()
    catalog.reload()
    assert catalog.resolve(SIZED).size_bytes == 4096  # offline, the saved listing still applies
    result = catalog.refresh()
    assert result.offline and catalog.resolve(SIZED).repo in result.reused
    assert catalog.resolve(SIZED).size_bytes == 4096
    hub.start()  # the fixture stops it


def test_an_old_listing_is_listed_again(hub, monkeypatch):
    catalog.refresh()
    hub.reset_counts()
    monkeypatch.setattr(time, "time", lambda real=time.time: real() + 2 * listings.DAY_S)
    catalog.refresh(max_age=listings.DAY_S)
    assert [r for r in hub.requests if catalog.resolve(SIZED).repo in r]


def test_ember_models_refresh_says_which_entries_changed(hub):
    env = dict(os.environ)
    out = subprocess.run(ember_cmd("models", "--refresh", "--hardware", str(_profile())),
                         capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    assert f"changed: {SIZED}: " in out.stdout and f"changed: {RENAMED}: the Hub lists" in out.stdout
    assert "entries changed" in out.stdout
    assert "could not list" in out.stderr and "gated" in out.stderr
    # the table that follows already uses the new listing
    assert SIZED in out.stdout


def _profile():
    from pathlib import Path
    return Path(__file__).resolve().parents[1] / "fixtures" / "hardware" / "nvidia_24gb.json"


def _hw():
    from engines.machine import hardware
    return hardware.HardwareProfile.load(_profile())
