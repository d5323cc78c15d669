"""Downloads through a FAKE Hugging Face hub on 127.0.0.1 (this machine cannot reach the real one).

The hub serves real files (the starter GGUF among them) with the real hub's
headers and redirects; `ember pull` runs as a real child process where a
process matters (kill and resume).
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engines.models import records
from tests.conftest import ember_cmd
from tests.fakehub.server import FakeHub

REPO = "ggml-org/gemma-3-270m-GGUF"
FILE = "gemma-3-270m-Q4_K_M.gguf"
NAME = f"{REPO}:{FILE}"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory, starter_path):
    """Files the hub serves: the starter GGUF and a few MB of random bytes."""
    d = tmp_path_factory.mktemp("hubfiles")
    small = d / "small.bin"
    small.write_bytes(os.urandom(3_000_000))
    big = d / "big.bin"
    big.write_bytes(os.urandom(80_000_000))
    return {"starter": starter_path, "small": small, "big": big}


@pytest.fixture
def hub(blobs):
    h = FakeHub()
    h.add(REPO, FILE, blobs["starter"])
    h.add("acme/corrupt-GGUF", "broken.gguf", blobs["small"], corrupt_at=1_234_567)
    h.add("acme/big-GGUF", "big.gguf", blobs["big"])
    h.add("meta-llama/Gated-GGUF", "gated.gguf", blobs["small"])
    h.repos["meta-llama/Gated-GGUF"].gated = True
    h.start()
    yield h
    h.stop()


@pytest.fixture
def env(hub, tmp_path, monkeypatch, fresh_home):
    cache = tmp_path / "hf-cache"
    for k, v in {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1",
                 "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token from this machine
    return {"cache": cache, "env": dict(os.environ)}


def _pull(env, *args, timeout=120):
    return subprocess.run(ember_cmd("pull", *args), env=env["env"], capture_output=True, text=True, timeout=timeout)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_full_download_is_verified_and_becomes_a_local_model(env, hub, blobs):
    from engines.models import store
    out = _pull(env, NAME)
    assert out.returncode == 0, out.stderr
    assert "is ready (verified)" in out.stdout
    path = records.ready_path(NAME)
    assert path and _sha256(path) == _sha256(blobs["starter"])
    assert hub.served[f"{REPO}/{FILE}"] == blobs["starter"].stat().st_size
    # the standard HF cache layout: huggingface_hub finds it offline
    from huggingface_hub import hf_hub_download
    assert Path(hf_hub_download(REPO, FILE, cache_dir=str(env["cache"]), local_files_only=True)).resolve() == \
        Path(path).resolve()
    assert any(s.name == "gemma-3-270m-q4_k_m" for s in store.local_models(assemble_starter=False))
    # a second pull fetches nothing
    hub.reset_counts()
    assert _pull(env, NAME).returncode == 0
    assert hub.served.get(f"{REPO}/{FILE}", 0) == 0


def test_killed_download_resumes_without_refetching(env, hub, blobs):
    size = blobs["starter"].stat().st_size
    hub.repos[REPO].files[FILE].throttle_bps = 40_000_000
    proc = subprocess.Popen(ember_cmd("pull", NAME), env=env["env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    partial = None
    while time.monotonic() < deadline:
        found = glob.glob(str(env["cache"] / "models--*" / "blobs" / "*.incomplete"))
        if found and os.path.getsize(found[0]) > 60_000_000:
            partial = found[0]
            break
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    assert partial, "the download never got going"
    kept = os.path.getsize(partial)
    assert 0 < kept < size
    hub.reset_counts()
    hub.repos[REPO].files[FILE].throttle_bps = None
    out = _pull(env, NAME)
    assert out.returncode == 0, out.stderr
    refetched = hub.served[f"{REPO}/{FILE}"]
    print(f"\nkilled at {kept:,} bytes; the resume fetched {refetched:,} bytes (file {size:,})")
    assert refetched == size - kept
    assert _sha256(records.ready_path(NAME)) == _sha256(blobs["starter"])


def test_ctrl_c_pauses_and_keeps_the_partial(env, hub, blobs):
    hub.repos[REPO].files[FILE].throttle_bps = 30_000_000
    proc = subprocess.Popen(ember_cmd("pull", NAME), env=env["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = glob.glob(str(env["cache"] / "models--*" / "blobs" / "*.incomplete"))
        if found and os.path.getsize(found[0]) > 20_000_000:
            break
        time.sleep(0.05)
    proc.send_signal(2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Paused at" in out and "again to resume" in out
    assert os.path.getsize(found[0]) > 20_000_000


def test_corrupted_byte_is_caught_by_the_checksum(env, hub):
    out = _pull(env, "acme/corrupt-GGUF:broken.gguf")
    assert out.returncode == 1
    assert "broken.gguf of acme/corrupt-GGUF:broken.gguf is corrupted" in out.stderr
    assert "not marked ready" in out.stderr
    assert records.ready_path("acme/corrupt-GGUF:broken.gguf") is None
    assert not glob.glob(str(env["cache"] / "models--acme--corrupt-GGUF" / "snapshots" / "*" / "broken.gguf"))


def test_gated_model_says_what_to_do(env, hub):
    out = _pull(env, "meta-llama/Gated-GGUF:gated.gguf", "--json")
    assert out.returncode == 1
    assert (f"meta-llama/Gated-GGUF is gated (HTTP 403): accept the license at {hub.url}/meta-llama/Gated-GGUF "
            "and log in with `hf auth login` or set HF_TOKEN") in out.stderr
    assert '"kind": "gated"' in out.stdout


def test_offline_mode_refuses_clearly(env, hub):
    env["env"]["HF_HUB_OFFLINE"] = "1"
    out = _pull(env, NAME)
    assert out.returncode == 1
    assert "offline mode is on (HF_HUB_OFFLINE)" in out.stderr
    assert not hub.served


@pytest.fixture
def small_disk(tmp_path):
    """A 50 MB tmpfs (root), else a loop-mounted 50 MB ext4 image; skip when neither can be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(mnt)],
                        capture_output=True, text=True)
    if ok.returncode != 0:
        img = tmp_path / "disk.img"
        subprocess.run(["truncate", "-s", "50M", str(img)], check=True)
        mk = subprocess.run(["mkfs.ext4", "-q", str(img)], capture_output=True, text=True)
        ok2 = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True) \
            if mk.returncode == 0 else mk
        if ok2.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here: tmpfs: {ok.stderr.strip()}; "
                        f"loop: {ok2.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_not_enough_space_is_refused_before_starting(env, hub, small_disk, monkeypatch):
    env["env"]["HF_HUB_CACHE"] = str(small_disk / "hub")
    out = _pull(env, "acme/big-GGUF:big.gguf")
    assert out.returncode == 1
    assert f"acme/big-GGUF:big.gguf needs 76 MiB, " in out.stderr
    assert f"free on {small_disk / 'hub'}" in out.stderr
    assert not hub.served


def test_disk_full_is_reported_and_the_partial_removed(env, hub, small_disk, monkeypatch):
    """The space check passes when the download starts; the disk fills while it runs (another program
    could do that). Here the check is switched off to reach the ENOSPC path. Issue 14: the partial file
    is removed, so the disk is not left full (it used to be kept for a resume)."""
    from engines.models import downloads
    monkeypatch.setenv("HF_HUB_CACHE", str(small_disk / "hub"))
    with pytest.raises(downloads.DiskFullError) as info:
        downloads.download("acme/big-GGUF:big.gguf", check_disk=False)
    err = info.value
    assert err.partial_bytes > 40_000_000 and err.total_bytes == 80_000_000
    assert not Path(err.path).exists()
    assert not list((small_disk / "hub").rglob("*.incomplete"))
    assert shutil.disk_usage(small_disk).used < 5_000_000
    assert err.message.startswith(f"the disk at {small_disk / 'hub'} filled up while downloading acme/big-GGUF")
    assert "the partial file was removed so the disk is not left full: free 76 MiB there and run again" \
        in err.message
    assert records.ready_path("acme/big-GGUF:big.gguf") is None


def test_queue_runs_pauses_resumes_and_cancels(env, hub, blobs):
    from engines.models import downloads
    hub.repos[REPO].files[FILE].throttle_bps = 50_000_000
    mgr = downloads.DownloadManager(max_parallel=1)
    seen = []
    mgr.subscribe(lambda job: seen.append((job.name, job.state, job.done_bytes)))
    mgr.add(NAME)
    mgr.add("acme/big-GGUF:big.gguf")
    assert mgr.job("acme/big-GGUF:big.gguf").state == "queued"  # one at a time
    deadline = time.monotonic() + 30
    while mgr.job(NAME).done_bytes < 30_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    mgr.pause(NAME)
    deadline = time.monotonic() + 30
    while mgr.job(NAME).state != "paused" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mgr.job(NAME).state == "paused"
    # the queue moves on, and survives a restart
    mgr.cancel("acme/big-GGUF:big.gguf")
    mgr.wait(30)
    again = downloads.DownloadManager(max_parallel=1)
    assert again.job(NAME).state == "paused"
    hub.repos[REPO].files[FILE].throttle_bps = None
    again.resume(NAME)
    deadline = time.monotonic() + 60
    while again.job(NAME).state not in ("ready", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert again.job(NAME).state == "ready", again.job(NAME).error
    assert any(s == "downloading" and b > 0 for _, s, b in seen)
    assert records.ready_path(NAME)
    freed = downloads.delete(NAME)
    assert freed == blobs["starter"].stat().st_size and records.ready_path(NAME) is None


def test_remote_header_is_read_with_range_requests(env, hub, blobs):
    from engines.machine import gguf_info
    from engines.models import remote_gguf
    info = remote_gguf.read(REPO, FILE)
    local = gguf_info.read(blobs["starter"])
    assert info.block_count == local.block_count == 18
    assert info.architecture == "gemma3" and len(info.tensors) == len(local.tensors)
    assert info.file_size == local.file_size
    served = hub.served[f"{REPO}/{FILE}"]
    assert served < 10_000_000, served  # the header, not the 253 MB file
    assert remote_gguf.cached(REPO, FILE).block_count == 18


def test_catalog_fit_uses_the_remote_header_where_the_catalog_lacks_facts(env, hub, blobs):
    """Qwen3.5's shape is not in the catalog yet: its fit is unknown until the header is read.
    (The FAKE hub serves the starter's bytes under that catalog file name: a real header, another model's.)"""
    from engines.models import catalog
    from engines.machine import hardware
    from engines.models import remote_gguf
    spec = catalog.resolve("qwen3.5-2b-q4_k_m")
    hub.add(spec.repo, spec.files[0], blobs["starter"])
    hw = hardware.HardwareProfile.load(Path(__file__).parents[1] / "fixtures" / "hardware" / "nvidia_24gb.json")
    before = {r["name"]: r for r in catalog.catalog_rows(hw, installed=None)}["qwen3.5-2b-q4_k_m"]
    assert before["fit"] == "unknown"
    remote_gguf.read(spec.repo, spec.files[0])
    after = {r["name"]: r for r in catalog.catalog_rows(hw, installed=None)}["qwen3.5-2b-q4_k_m"]
    assert after["fit"] == "gpu" and after["weights_source"] == "remote header"
    assert after["total_layers"] == 19  # the header's 18 blocks + output
