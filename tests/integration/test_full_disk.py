"""Issue 14, point 5: a full disk gives a clear message, and leaves no partial file that keeps it full.

The disk is real where it can be: a small tmpfs mounted for the test (root can mount one; else the
tests that need it are skipped, saying so). The space check before assembling the starter is also
tested with its free-space probe patched (``paths.free_bytes``), which runs anywhere; and the case
where that check passes but the disk fills anyway (another program writing) patches the probe to
say "plenty" over a real tmpfs, so the write itself meets ENOSPC.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from engines import cli, paths
from engines.models import store
from tests.conftest import ember_cmd

MIB = 1024 * 1024


def _mount_tmpfs(where: Path, size_mb: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                        capture_output=True, text=True)
    if ok.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here ({ok.stderr.strip()}); the patched-probe tests "
                    "cover the space check")


@pytest.fixture
def small_home(tmp_path, monkeypatch):
    """EMBER_HOME on a real 40 MiB tmpfs: too small for the starter (253 MB, 241 MiB)."""
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, 40)
    home = mnt / "home"
    monkeypatch.setenv("EMBER_HOME", str(home))
    yield home
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".partial", ".incomplete", ".tmp"))]


def test_ember_models_on_a_full_disk_lists_the_models_and_says_why_the_starter_is_missing(small_home):
    out = subprocess.run(ember_cmd("models"), env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    starter_dir = small_home / "data" / "models" / "starter"
    assert ("ember: warning: the starter model is not listed: There is not enough space on the disk at "
            f"{starter_dir} for the starter model: it needs 241 MiB, ") in out.stderr
    assert "Free some space there and try again." in out.stderr
    assert "Traceback" not in out.stderr and "Errno" not in out.stderr
    assert "qwen2.5" in out.stdout  # the catalog is still listed
    assert not _partials(small_home)
    assert shutil.disk_usage(small_home).used < 2 * MIB


def test_ember_chat_starter_on_a_full_disk_says_where_and_how_much(small_home):
    out = subprocess.run(ember_cmd("chat", "starter", "hello"), env=dict(os.environ), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    starter_dir = small_home / "data" / "models" / "starter"
    assert out.stderr.startswith(f"ember: There is not enough space on the disk at {starter_dir} for the "
                                 "starter model: it needs 241 MiB, ")
    assert "Traceback" not in out.stderr
    assert not _partials(small_home)


def test_a_disk_that_fills_during_assembly_keeps_no_partial(small_home, monkeypatch):
    """The space check is told there is plenty (another program then fills the disk): the write meets
    ENOSPC on the real tmpfs, and the half-written starter is removed."""
    monkeypatch.setattr(paths, "free_bytes", lambda folder: 10 * 1024 * MIB)
    with pytest.raises(paths.NoSpace) as info:
        store.ensure_starter()
    err = info.value
    assert err.folder == small_home / "data" / "models" / "starter" and err.needed_bytes > 240 * MIB
    assert err.message.startswith(f"There is not enough space on the disk at {err.folder} for the starter model")
    assert not _partials(small_home)
    assert shutil.disk_usage(small_home).used < 2 * MIB


def test_the_space_check_refuses_before_writing_with_a_patched_probe(tmp_path, monkeypatch, capsys):
    """No mount needed: the free-space probe says 12 MiB. Nothing is written, the CLI says where and how much."""
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(paths, "free_bytes", lambda folder: 12 * MIB)
    code = cli.main(["chat", "starter", "hello"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == (f"ember: There is not enough space on the disk at {paths.models_dir() / 'starter'} for the "
                   "starter model: it needs 241 MiB, 12 MiB free. Free some space there and try again.\n")
    assert not [p for p in (tmp_path / "home").rglob("*") if p.is_file() and p.stat().st_size]


def test_a_stale_partial_is_cleaned_at_start(tmp_path, monkeypatch):
    """A crash (or an older Ember on a full disk) left 50 MiB of half a starter: the next start removes it."""
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    stale = paths.models_dir() / "starter" / "gemma-3-270m-q4_k_m.gguf.partial"
    stale.parent.mkdir(parents=True, exist_ok=True)
    with open(stale, "wb") as f:
        f.truncate(50 * MIB)
    out = subprocess.run(ember_cmd("params", "--engine", "llamacpp", "--json"), env=dict(os.environ),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not stale.exists()
