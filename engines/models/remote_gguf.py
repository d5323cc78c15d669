"""The header of a GGUF on the Hub, read with HTTP range requests (never the weights).

Where the catalog lacks a GGUF's facts, its fit is computed on the real header
(block count, attention shape, every tensor's size) like a local file. The
first megabytes are fetched, doubling until the header parses; the bytes are
cached under the data folder, so a later fit needs no network. Each header
read anew bumps :func:`generation`, which the catalog's cached rows are keyed
on: this module never calls into the catalog.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from pathlib import Path

import httpx

from engines import paths
from engines.machine import gguf_info
from engines.models import hub
from engines.units import MIB

log = logging.getLogger(__name__)

FIRST = MIB
LIMIT = 64 * MIB  # headers with huge vocabularies run to a few MB; more than this is not a header

_reads = itertools.count(1)
_generation = 0


def generation() -> int:
    """How many headers were read from the Hub in this process: fits computed before a change are stale."""
    return _generation


class RemoteHeaderError(Exception):
    def __init__(self, repo: str, filename: str, problem: str):
        super().__init__(f"{repo}/{filename}: {problem}")
        self.repo, self.filename, self.problem = repo, filename, problem


def _cache_base(repo: str, filename: str, revision: str) -> Path:
    key = hashlib.sha256(f"{repo}/{revision}/{filename}".encode()).hexdigest()[:24]
    return paths.data_dir() / "gguf_headers" / key


def _parse(header: Path, size: int) -> gguf_info.GGUFInfo:
    info = gguf_info.read(header, check_data=False)
    info.file_size = size
    return info


def cached(repo: str, filename: str, revision: str = "main") -> gguf_info.GGUFInfo | None:
    """The header read before, or None."""
    base = _cache_base(repo, filename, revision)
    try:
        meta = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        return _parse(base.with_suffix(".header"), int(meta["size"]))
    except (OSError, ValueError, KeyError, gguf_info.GGUFError):
        return None


def _fetch(client: httpx.Client, url: str, repo: str, filename: str, part: Path) -> tuple[gguf_info.GGUFInfo, int, int]:
    """Range-request the start of the file, doubling, until the header parses; (info, bytes read, file size)."""
    want, data = FIRST, b""
    while True:  # fetch only what is missing, doubling, until the header parses
        try:
            resp = client.get(url, headers={**hub.headers(), "Range": f"bytes={len(data)}-{want - 1}"})
        except httpx.HTTPError as exc:
            raise RemoteHeaderError(repo, filename, f"cannot reach {hub.endpoint()}: {exc}") from exc
        if resp.status_code in (401, 403):
            raise RemoteHeaderError(repo, filename, f"HTTP {resp.status_code}: the repository is gated; "
                                    "accept its license and log in with `hf auth login` or set HF_TOKEN")
        if resp.status_code == 200:
            data = resp.content[:want]  # no range support: the start of the whole file
        elif resp.status_code == 206:
            data += resp.content
        else:
            raise RemoteHeaderError(repo, filename, f"HTTP {resp.status_code}")
        m = re.match(r"bytes \d+-\d+/(\d+)", resp.headers.get("Content-Range", ""))
        size = int(m[1]) if m else int(resp.headers.get("Content-Length") or len(data))
        with os.fdopen(paths.open_private(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
            f.write(data)
        try:
            return _parse(part, size), want, size
        except gguf_info.GGUFError as exc:
            if exc.kind != "truncated" or want >= LIMIT or want >= size:
                raise RemoteHeaderError(repo, filename, exc.problem) from exc
            want *= 2


def read(repo: str, filename: str, revision: str = "main") -> gguf_info.GGUFInfo:
    """Fetch (or take from the cache) the header of ``repo/filename``; :class:`RemoteHeaderError` if it fails."""
    global _generation
    hit = cached(repo, filename, revision)
    if hit is not None:
        return hit
    if hub.offline():
        raise RemoteHeaderError(repo, filename, "offline mode is on (HF_HUB_OFFLINE)")
    base = _cache_base(repo, filename, revision)
    paths.private_dir(base.parent)
    tmp = base.with_suffix(".part")
    with httpx.Client(follow_redirects=True, timeout=30.0) as client:
        _, want, size = _fetch(client, hub.resolve_url(repo, revision, filename), repo, filename, tmp)
    tmp.replace(base.with_suffix(".header"))
    paths.atomic_write_text(base.with_suffix(".json"), json.dumps({"repo": repo, "file": filename,
                                                                    "revision": revision, "size": size}))
    log.info("read the header of %s/%s (%d bytes of %d)", repo, filename, want, size)
    _generation = next(_reads)  # the fit of that variant now rests on its real header
    return _parse(base.with_suffix(".header"), size)
