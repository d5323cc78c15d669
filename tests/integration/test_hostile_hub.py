"""Issue 14, point 1: a malicious download mirror cannot write outside the cache.

A FAKE hub on 127.0.0.1 (tests/fakehub) plays the hostile mirror: its metadata names files with
``../`` and absolute paths, a commit id with ``../`` in it, a checksum that is a path, and a file
that is also a folder; it serves the bytes at whatever URL the client ends up asking (``anywhere``),
so a client that follows those names gets real, correctly checksummed bytes. Two more cases plant
symbolic links inside the cache that point out of it. Around the cache sits a "world" of files a
user would not want touched; after every attempt not one of them has changed, appeared or gone.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from engines.models import downloads, records
from tests.conftest import ember_cmd
from tests.fakehub.server import FakeHub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _tree(root: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under ``root`` but ``skip``: kind, and the bytes' hash or the link's target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            if p == skip:
                continue
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                out[str(p)] = ("dir", oct(p.stat().st_mode))
            else:
                out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), oct(p.stat().st_mode))
    return out


@pytest.fixture
def world(tmp_path):
    """The user's files around the cache: world/victim/* and world/cache (the Hub cache)."""
    w = tmp_path / "world"
    victim = w / "victim"
    victim.mkdir(parents=True)
    for name in ("file.txt", "abs.txt", "model.gguf", "notes.md"):
        (victim / name).write_text(f"precious {name}\n")
    # where a checksum that is a path would put its partial file
    (victim / "blob.incomplete").write_text("precious too\n")
    (w / "cache").mkdir()
    return w


@pytest.fixture
def payload(tmp_path):
    p = tmp_path / "payload.bin"
    p.write_bytes(b"ATTACKER CONTENT " * 4096)
    return p


@pytest.fixture
def hub(world, payload):
    h = FakeHub()
    victim = world / "victim"

    def hostile(repo: str, filename: str, **kw) -> None:
        h.add(repo, filename, payload, **kw)
        h.repos[repo].anywhere = True

    hostile("evil/traversal", "../../../../victim/file.txt")
    hostile("evil/absolute", str(victim / "abs.txt"))
    hostile("evil/deep", "sub/../../../../../victim/notes.md")
    hostile("evil/commit", "model.gguf")
    h.repos["evil/commit"].commit = "../../../victim/commitdir"
    hostile("evil/checksum", "model.gguf", sha256="../../../victim/blob")
    hostile("evil/backslash", "..\\..\\..\\..\\victim\\file.txt")
    hostile("evil/file-and-folder", "weights")
    h.add("evil/file-and-folder", "weights/part.bin", payload)
    h.add("evil/planted-snapshot", "model.gguf", payload)
    h.add("evil/planted-blobs", "model.gguf", payload)
    h.add("fine/model", "model.gguf", payload)
    h.start()
    yield h
    h.stop()


@pytest.fixture
def env(hub, world, monkeypatch, fresh_home):
    for k, v in hub.environ(world / "cache").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return dict(os.environ)


def _attempt(repo: str) -> BaseException | None:
    """Download ``repo``; the error it raised (None: it claimed success)."""
    try:
        downloads.download(repo)
    except Exception as exc:  # noqa: BLE001 - the test inspects whatever came out
        return exc
    return None


HOSTILE = {  # repository -> what the refusal names
    "evil/traversal": ("the file name", "climbs out of its folder"),
    "evil/absolute": ("the file name", "is an absolute path"),
    "evil/deep": ("the file name", "climbs out of its folder"),
    "evil/commit": ("the commit id", "is not a hexadecimal commit id"),
    "evil/checksum": ("the sha256 of model.gguf", "is not a sha256 checksum"),
    "evil/backslash": ("the file name", "has a backslash"),
    "evil/file-and-folder": ("the file name", "is inside 'weights', which is a file too"),
}


@pytest.mark.parametrize("repo", sorted(HOSTILE))
def test_hostile_names_are_refused_and_nothing_outside_the_cache_changes(env, hub, world, repo):
    before = _tree(world, world / "cache")
    err = _attempt(repo)
    assert _tree(world, world / "cache") == before  # first: nothing of the user's was touched
    what, why = HOSTILE[repo]
    assert isinstance(err, downloads.UnsafeAnswerError), f"not refused: {err!r}"
    assert err.what == what and why in err.why
    assert err.message.startswith(f"refused to download {repo}: the hub at {hub.url} gave {what} ")
    assert "nothing was written" in err.message
    assert _tree(world, world / "cache") == before
    assert records.ready_path(repo) is None
    assert not [r for r in hub.requests if "/resolve/" in r or "/cdn/" in r or "victim" in r], \
        "a refused answer must not be followed by any download"


def _plant(world: Path, repo: str, inside: str) -> Path:
    """A symbolic link inside the cache (as a careless script or an earlier tool might leave) to the victim."""
    link = world / "cache" / ("models--" + repo.replace("/", "--")) / inside
    link.parent.mkdir(parents=True)
    os.symlink(world / "victim", link)
    return link


@pytest.mark.parametrize("repo,inside", [("evil/planted-snapshot", f"snapshots/{COMMIT}"),
                                         ("evil/planted-blobs", "blobs")])
def test_links_inside_the_cache_that_lead_out_are_not_followed(env, hub, world, repo, inside):
    _plant(world, repo, inside)
    before = _tree(world, world / "cache")
    err = _attempt(repo)
    assert _tree(world, world / "cache") == before
    assert isinstance(err, downloads.UnsafeAnswerError), f"not refused: {err!r}"
    assert err.what == "a path that leads"
    assert f"resolves to {world / 'victim'}" in err.why
    assert records.ready_path(repo) is None


def test_ember_pull_from_a_hostile_mirror_says_no_and_a_good_one_still_works(env, hub, world):
    """The issue's own reproduction: `ember pull` of a traversal name said "ready (verified)"."""
    before = _tree(world, world / "cache")
    out = subprocess.run(ember_cmd("pull", "evil/traversal"), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "ready" not in out.stdout
    assert out.stderr.startswith(f"ember: refused to download evil/traversal: the hub at {hub.url} gave the file "
                                 "name '../../../../victim/file.txt', which climbs out of its folder")
    assert "Traceback" not in out.stderr
    assert _tree(world, world / "cache") == before
    good = subprocess.run(ember_cmd("pull", "fine/model:model.gguf"), env=env, capture_output=True, text=True,
                          timeout=120)
    assert "is ready (verified)" in good.stdout, good.stderr
    assert _tree(world, world / "cache") == before
