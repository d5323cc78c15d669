"""The record of downloads that finished and were verified: which model is ready, and where.

A model counts as downloaded only once every file matched the Hub's checksum;
the transfer (``downloads``) writes the record then, and the catalog reads it
to give a variant its local path. Both import this module, never each other.
The record lives in Ember's data folder (``downloads/ready.json``); a file
that shrank or vanished since makes its model not ready again.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engines import paths

log = logging.getLogger(__name__)

_lock = threading.Lock()


@dataclass(frozen=True)
class FileRecord:
    """One verified file: its name in the repository, size, checksum, snapshot link and blob."""

    name: str
    size: int
    sha256: str | None
    path: str
    blob: str


def _path() -> Path:
    return paths.data_dir() / "downloads" / "ready.json"


def _load() -> dict:
    try:
        return json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _write(recs: dict) -> None:
    paths.atomic_write_text(_path(), json.dumps(recs, indent=2))


def _intact(rec: dict) -> bool:
    try:
        return all(Path(f["path"]).stat().st_size == f["size"] for f in rec["files"])
    except (OSError, KeyError, TypeError):
        return False


def ready_map() -> dict[str, str]:
    """name -> model path (GGUF file or folder) for every download complete and verified."""
    return {name: rec["path"] for name, rec in _load().items() if _intact(rec)}


def ready_path(name: str) -> str | None:
    """Where the verified download of ``name`` is, or None."""
    rec = _load().get(name)
    return rec["path"] if rec and _intact(rec) else None


def downloaded() -> list[dict]:
    """Verified downloads with their disk use, for the downloads panel."""
    out = []
    for name, rec in sorted(_load().items()):
        size = sum(f.get("size", 0) for f in rec.get("files", []))
        out.append({"name": name, "path": rec.get("path"), "bytes": size, "repo": rec.get("repo"),
                    "ok": _intact(rec)})
    return out


def save(name: str, repo: str, commit: str, path: str, files: list[FileRecord]) -> None:
    """Mark ``name`` ready at ``path`` (a GGUF file or a snapshot folder)."""
    rec = {"repo": repo, "commit": commit, "path": path, "verified_at": time.time(),
           "files": [asdict(f) for f in files]}
    with _lock:
        recs = _load()
        recs[name] = rec
        _write(recs)


def delete(name: str) -> int:
    """Forget ``name`` and remove its files (blobs shared with another record stay); bytes freed."""
    with _lock:
        recs = _load()
        rec = recs.pop(name, None)
        if rec is None:
            return 0
        keep = {f.get("blob") for r in recs.values() for f in r.get("files", [])}
        freed = 0
        for f in rec.get("files", []):
            for p in (f.get("path"), f.get("blob") if f.get("blob") not in keep else None):
                if p and os.path.lexists(p):
                    if not os.path.islink(p):
                        freed += os.path.getsize(p)
                    os.unlink(p)
        _write(recs)
    log.info("deleted the download of %s (%d bytes freed)", name, freed)
    return freed
