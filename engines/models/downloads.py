"""Model downloads from the Hugging Face Hub that never lose bytes.

Metadata (file sizes, LFS sha256, the commit) comes from ``huggingface_hub``
(``HfApi.model_info(files_metadata=True)``), honouring ``HF_ENDPOINT``,
``HF_TOKEN`` / ``hf auth login``, ``HF_HUB_OFFLINE`` and the standard cache
(``HF_HUB_CACHE`` / ``HF_HOME``), all read at call time.

The bytes are fetched here, not by ``hf_hub_download``: huggingface_hub 2.x
writes each attempt to a process-unique temporary file and deletes it on any
failure, so nothing survives a crash, a Ctrl-C or a full disk. Ember writes
``blobs/<sha256>.incomplete`` in the same cache layout, resumes it with an
HTTP range request from its size, hashes as it goes, and only after the
sha256 (git blob sha1 for small non-LFS files) matches the hub's metadata
renames it into ``blobs/`` and links ``snapshots/<commit>/<file>``, so the
file is also where ``hf_hub_download`` would look. A model is "ready" only
when every file is verified; the record is kept by :mod:`engines.models.records`.

A hub (or a mirror in ``HF_ENDPOINT``) is not trusted with paths: file names
must be plain relative names, commit ids and checksums hex, and every path is
resolved and checked to stay inside the repository's cache folder before
anything is written, removed or linked (issue 14). A disk that fills up
mid-download gets its partial file removed, so it is not left full.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from engines import paths, units
from engines.models import catalog, hub, records, store

log = logging.getLogger(__name__)

CHUNK = units.MIB
STATES = ("queued", "downloading", "paused", "verifying", "ready", "failed", "cancelled")


# -- errors --------------------------------------------------------------------------------------------

class DownloadError(Exception):
    """A download that cannot go on; ``message`` is the sentence for people, written once here."""

    kind = "error"

    def __init__(self, model: str, **fields):
        self.model = model
        self.fields = fields
        for k, v in fields.items():
            setattr(self, k, v)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.model}: download failed"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model, "message": self.message,
                **{k: v for k, v in self.fields.items() if isinstance(v, (str, int, float, type(None)))}}


class GatedModelError(DownloadError):
    """401/403: the repository is gated or private. Fields: repo, status, url."""

    kind = "gated"

    @property
    def message(self) -> str:
        return (f"{self.repo} is gated (HTTP {self.status}): accept the license at {self.url} "
                "and log in with `hf auth login` or set HF_TOKEN")


class NotFoundError(DownloadError):
    kind = "not_found"

    @property
    def message(self) -> str:
        what = f"{self.filename} in {self.repo}" if self.filename else self.repo
        return f"{what} was not found on {self.endpoint}"


class OfflineError(DownloadError):
    kind = "offline"

    @property
    def message(self) -> str:
        return (f"{self.model} is not downloaded and offline mode is on (HF_HUB_OFFLINE); "
                "unset HF_HUB_OFFLINE to download it")


class NetworkError(DownloadError):
    kind = "network"

    @property
    def message(self) -> str:
        kept = f"; {units.size(self.partial_bytes)} already downloaded are kept, run again to resume" \
            if self.partial_bytes else ""
        return f"cannot reach {self.endpoint}: {self.reason}{kept}"


class InsufficientSpaceError(DownloadError):
    """Checked before starting. Fields: needed, free, where."""

    kind = "no_space"

    @property
    def message(self) -> str:
        return f"{self.model} needs {units.size(self.needed)}, {units.size(self.free)} free on {self.where}"


class DiskFullError(DownloadError):
    """ENOSPC while writing. Fields: path, partial_bytes (what had arrived), total_bytes, where."""

    kind = "disk_full"

    @property
    def message(self) -> str:
        return (f"the disk at {self.where} filled up while downloading {self.model} "
                f"({units.size(self.partial_bytes)} of {units.size(self.total_bytes)} had arrived); the partial "
                f"file was removed so the disk is not left full: free {units.size(self.total_bytes)} there "
                "and run again")


class CacheError(DownloadError):
    """The download cannot be written where it goes (permissions, a read-only disk). Fields: where, reason."""

    kind = "cache"

    @property
    def message(self) -> str:
        return f"cannot write the download of {self.model} into {self.where}: {self.reason}"


class UnsafeAnswerError(DownloadError):
    """The hub named a file, commit or checksum that could reach outside the cache.
    Fields: what, value, why, endpoint."""

    kind = "unsafe"

    @property
    def message(self) -> str:
        return (f"refused to download {self.model}: the hub at {self.endpoint} gave {self.what} {self.value!r}, "
                f"which {self.why}; nothing was written. If HF_ENDPOINT points to a mirror, check that you "
                "trust it")


class ChecksumError(DownloadError):
    """The bytes do not match the hub's sha256. Fields: filename, expected, actual."""

    kind = "checksum"

    @property
    def message(self) -> str:
        return (f"{self.filename} of {self.model} is corrupted: its sha256 is {self.actual[:16]}..., the hub says "
                f"{self.expected[:16]}...; the bad file was removed and the model is not marked ready: "
                "run again to download it afresh")


class UnknownModelError(DownloadError):
    kind = "unknown"

    @property
    def message(self) -> str:
        return (f"{self.model} is not in the catalog; give a catalog name from `ember models` "
                "or OWNER/REPO:FILE.gguf")


# -- what to fetch -----------------------------------------------------------------------------------------

@dataclass
class RemoteFile:
    filename: str
    size: int
    sha256: str | None     # LFS files
    blob_id: str | None    # git blob sha1 (small, non-LFS files)

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id or ""


@dataclass
class Target:
    """A downloadable model: a catalog variant or OWNER/REPO[:FILE]."""

    name: str
    repo: str
    files: list[str]          # empty: the whole repository
    revision: str = "main"
    catalog: bool = False

    @property
    def single_file(self) -> bool:
        return len(self.files) >= 1 and all(f.endswith(".gguf") for f in self.files)


def target(name: str) -> Target:
    """What ``name`` means to download: a catalog variant, else ``OWNER/REPO[:FILE]``."""
    try:
        spec = catalog.resolve(name)
        return Target(spec.name, spec.repo or "", list(spec.files), catalog=True)
    except LookupError:
        pass
    if "/" in name and not name.startswith(("/", ".")):
        repo, _, file = name.partition(":")
        if repo.count("/") == 1 and all(_REPO_PART.fullmatch(p) and p not in (".", "..") for p in repo.split("/")):
            return Target(name, repo, [file] if file else [])
    raise UnknownModelError(name)


# -- names from the hub ---------------------------------------------------------------------------------

_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMIT = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")    # a git commit: sha1, or sha256 in newer git
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BLOB = _COMMIT


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a plain relative file name inside a repository (None: it is)."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if "\\" in name:
        return "has a backslash (a path on Windows)"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "has control characters"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "climbs out of its folder ('..') or has an empty part"
    if len(name) > 1024 or any(len(p.encode()) > 255 for p in parts):
        return "is too long for a file name"
    return None


def _refuse(t: Target, what: str, value: object, why: str) -> UnsafeAnswerError:
    log.info("refused a hub answer for %s: %s %r %s", t.name, what, value, why)  # the error says it to the user
    return UnsafeAnswerError(t.name, what=what, value=str(value)[:200], why=why, endpoint=hub.endpoint())


def _check_names(t: Target, commit: object, files: list["RemoteFile"]) -> None:
    """Refuse what the hub said before anything is written: names, commit, checksums, sizes."""
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        raise _refuse(t, "the commit id", commit, "is not a hexadecimal commit id")
    if name_problem(t.revision):
        raise _refuse(t, "the revision", t.revision, name_problem(t.revision))
    names = {f.filename for f in files}
    for f in files:
        problem = name_problem(f.filename)
        if problem:
            raise _refuse(t, "the file name", f.filename, problem)
        parent = f.filename.rsplit("/", 1)[0] if "/" in f.filename else None
        while parent:
            if parent in names:
                raise _refuse(t, "the file name", f.filename, f"is inside {parent!r}, which is a file too")
            parent = parent.rsplit("/", 1)[0] if "/" in parent else None
        if f.sha256 is not None and not _SHA256.fullmatch(str(f.sha256)):
            raise _refuse(t, "the sha256 of " + f.filename, f.sha256, "is not a sha256 checksum")
        if f.blob_id is not None and not _BLOB.fullmatch(str(f.blob_id)):
            raise _refuse(t, "the blob id of " + f.filename, f.blob_id, "is not a git object id")
        if not f.etag:
            raise _refuse(t, "no checksum for", f.filename, "cannot be verified")
        if f.size < 0:
            raise _refuse(t, "the size of " + f.filename, f.size, "is negative")


def _inside(root: Path, path: Path) -> bool:
    """``path``, links resolved, is ``root`` or below it (``root``'s links resolved too)."""
    top, real = os.path.realpath(root), os.path.realpath(path)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _check_inside(t: Target, root: Path, *places: Path) -> None:
    for p in places:
        if not _inside(root, p):
            raise _refuse(t, "a path that leads", str(p), f"resolves to {os.path.realpath(p)}, outside {root}")


@dataclass
class Plan:
    target: Target
    commit: str
    files: list[RemoteFile]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _map_hub_error(exc: Exception, t: Target, filename: str | None = None) -> DownloadError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    name = type(exc).__name__
    if name == "GatedRepoError" or status in (401, 403):
        return GatedModelError(t.name, repo=t.repo, status=status or 403, url=f"{hub.endpoint()}/{t.repo}")
    if status == 404 or name in ("RepositoryNotFoundError", "EntryNotFoundError", "RevisionNotFoundError"):
        return NotFoundError(t.name, repo=t.repo, filename=filename, endpoint=hub.endpoint())
    return NetworkError(t.name, endpoint=hub.endpoint(), reason=f"{name}: {exc}"[:300], partial_bytes=0)


def plan(t: Target) -> Plan:
    """Sizes and checksums of what ``t`` needs, from the hub."""
    if hub.offline():
        raise OfflineError(t.name)
    from huggingface_hub import HfApi  # lazy: huggingface_hub costs a few hundred ms at import
    try:
        info = HfApi(endpoint=hub.endpoint(), token=hub.token() or False).model_info(
            t.repo, revision=t.revision, files_metadata=True)
    except Exception as exc:
        raise _map_hub_error(exc, t) from exc
    siblings = {s.rfilename: s for s in info.siblings or []}
    wanted = t.files or sorted(siblings)
    files = []
    for fn in wanted:
        s = siblings.get(fn)
        if s is None:
            raise NotFoundError(t.name, repo=t.repo, filename=fn, endpoint=hub.endpoint())
        lfs = s.lfs
        try:
            size = int(lfs.size if lfs else (s.size or 0))
        except (TypeError, ValueError):
            raise _refuse(t, "the size of " + str(fn), lfs.size if lfs else s.size, "is not a number") from None
        files.append(RemoteFile(fn, size, lfs.sha256 if lfs else None, s.blob_id))
    _check_names(t, info.sha, files)
    return Plan(t, info.sha, files)


# -- the ready records ----------------------------------------------------------------------------------

def delete(name: str) -> int:
    """Remove a downloaded model's files and its place among the local models; bytes freed."""
    freed = records.delete(name)
    try:
        store.remove_local(name)
    except OSError as exc:  # the files are gone; a stale entry in the local list is dropped at its next read
        log.warning("could not drop %s from the local models: %s", name, exc)
    return freed


def _save_record(p: Plan, done: list[tuple[RemoteFile, Path, Path]]) -> str:
    snap = hub.repo_folder(p.target.repo) / "snapshots" / p.commit
    path = str(snap / p.files[0].filename) if p.target.single_file else str(snap)
    records.save(p.target.name, p.target.repo, p.commit, path,
                 [records.FileRecord(f.filename, f.size, f.sha256, str(link), str(blob)) for f, link, blob in done])
    return path


# -- the transfer -------------------------------------------------------------------------------------------

@dataclass
class Progress:
    name: str
    state: str
    done_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float = 0.0
    eta_s: float | None = None
    filename: str = ""
    error: DownloadError | None = None

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0


class _Stop:
    """Why a transfer should stop: None, "pause" or "cancel"."""

    def __init__(self):
        self.why: str | None = None

    def __call__(self) -> str | None:
        return self.why


def partial_bytes(p: Plan) -> int:
    """Bytes already on disk (verified blobs and partial files) of a plan."""
    blobs = hub.repo_folder(p.target.repo) / "blobs"
    total = 0
    for f in p.files:
        for q in (blobs / f.etag, blobs / (f.etag + ".incomplete")):
            if q.exists():
                total += q.stat().st_size
                break
    return total


def check_space(p: Plan) -> None:
    """Refuse to start when the rest of the download does not fit on the disk."""
    needed = max(0, p.total_bytes - partial_bytes(p))
    where = hub.cache()
    free = paths.free_bytes(where)
    if needed > free:
        raise InsufficientSpaceError(p.target.name, needed=needed, free=free, where=str(where))


def _verify_hasher(f: RemoteFile):
    if f.sha256:
        return hashlib.sha256(), f.sha256
    if f.blob_id:
        h = hashlib.sha1()
        h.update(b"blob %d\0" % f.size)
        return h, f.blob_id
    return None, None


def _link(snapshot_file: Path, blob: Path) -> None:
    snapshot_file.parent.mkdir(parents=True, exist_ok=True)
    if os.path.isdir(snapshot_file) and not os.path.islink(snapshot_file):
        raise IsADirectoryError(errno.EISDIR, "a folder is where the file should be linked", str(snapshot_file))
    if os.path.lexists(snapshot_file):
        os.unlink(snapshot_file)
    try:
        os.symlink(os.path.relpath(blob, snapshot_file.parent), snapshot_file)
    except OSError:  # no symlinks (some Windows setups): the HF cache then holds copies
        shutil.copy2(blob, snapshot_file)


@dataclass
class _Partial:
    """A file's bytes so far: the ``.incomplete`` file, its size, and the checksum of what it holds."""

    path: Path
    file: RemoteFile
    have: int = 0
    hasher: object = None
    expected: str | None = None

    @classmethod
    def resume(cls, path: Path, f: RemoteFile) -> "_Partial":
        """Pick up what an earlier attempt left (too long a file starts over), hashing it again."""
        part = cls(path, f)
        part.restart()
        part.have = path.stat().st_size if path.exists() else 0
        if part.have > f.size:
            path.unlink()
            part.have = 0
        if part.hasher is not None and part.have:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(CHUNK), b""):
                    part.hasher.update(block)
        return part

    def restart(self) -> None:
        self.have = 0
        self.hasher, self.expected = _verify_hasher(self.file)

    def kept(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


def _check_status(p: Plan, f: RemoteFile, status: int, have: int) -> None:
    """Turn the Hub's refusals into the DownloadError that says what to do."""
    if status in (401, 403):
        raise GatedModelError(p.target.name, repo=p.target.repo, status=status, url=f"{hub.endpoint()}/{p.target.repo}")
    if status == 404:
        raise NotFoundError(p.target.name, repo=p.target.repo, filename=f.filename, endpoint=hub.endpoint())
    if status >= 400 and status != 416:  # 416: nothing left to send, the partial is complete
        raise NetworkError(p.target.name, endpoint=hub.endpoint(), reason=f"HTTP {status}", partial_bytes=have)


def _write_body(p: Plan, part: _Partial, resp: httpx.Response, mode: str, total: int,
                report: Callable[[int], None], stop: Callable[[], str | None]) -> str:
    """Append the response to the partial file, hashing as it goes; "done", or why it stopped."""
    state = "done"
    with open(part.path, mode, buffering=0) as out:
        try:
            for chunk in resp.iter_bytes(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view):]
                if part.hasher is not None:
                    part.hasher.update(chunk)
                part.have += len(chunk)
                report(part.have)
                why = stop()
                if why:
                    state = why
                    break
            os.fsync(out.fileno())  # a paused partial is on disk too: resuming hashes it again
        except OSError as exc:
            if not paths.is_no_space(exc):
                raise
            arrived = part.kept()
            out.close()
            part.path.unlink(missing_ok=True)  # a partial file would keep the disk full
            log.warning("the disk filled up while downloading %s; removed %s (%d bytes)", p.target.name,
                        part.path, arrived)
            raise DiskFullError(p.target.name, path=str(part.path), partial_bytes=arrived,
                                total_bytes=total, where=str(hub.cache())) from exc
    return state


def _transfer(p: Plan, part: _Partial, total: int, report: Callable[[int], None],
              stop: Callable[[], str | None]) -> str:
    """GET the rest of the file with a range request; "done", or why it stopped ("pause"/"cancel")."""
    f = part.file
    url = hub.resolve_url(p.target.repo, p.commit, f.filename)
    headers = hub.headers()
    if part.have:
        headers["Range"] = f"bytes={part.have}-"
    log.info("downloading %s from byte %d of %d", url, part.have, f.size)
    try:
        with httpx.stream("GET", url, headers=headers, follow_redirects=True,
                          timeout=httpx.Timeout(30.0, read=60.0)) as resp:
            _check_status(p, f, resp.status_code, part.have)
            if resp.status_code == 416:
                return "done"
            mode = "ab"
            if part.have and resp.status_code == 200:  # the server ignored the range: start over
                log.warning("%s ignored the range request; downloading %s from the start", url, f.filename)
                part.restart()
                mode = "wb"
            return _write_body(p, part, resp, mode, total, report, stop)
    except httpx.HTTPError as exc:
        raise NetworkError(p.target.name, endpoint=hub.endpoint(), reason=f"{type(exc).__name__}: {exc}"[:300],
                           partial_bytes=part.kept()) from exc


def _verify(p: Plan, part: _Partial) -> None:
    """The whole file arrived and its checksum is the Hub's; a corrupt file is removed."""
    f = part.file
    got = part.path.stat().st_size
    if got < f.size:
        raise NetworkError(p.target.name, endpoint=hub.endpoint(), partial_bytes=got,
                           reason=f"the connection ended after {got:,} of {f.size:,} bytes of {f.filename}")
    if part.hasher is not None:
        actual = part.hasher.hexdigest()
        if actual != part.expected:
            part.path.unlink(missing_ok=True)
            raise ChecksumError(p.target.name, filename=f.filename, expected=part.expected, actual=actual)


def _fetch_file(p: Plan, f: RemoteFile, base: int, total: int, report: Callable[[int, str], None],
                stop: Callable[[], str | None]) -> tuple[str, Path, Path]:
    """Download one file into the cache, resuming its partial; returns (state, snapshot path, blob)."""
    folder = hub.repo_folder(p.target.repo)
    blobs = folder / "blobs"
    blob = blobs / f.etag
    snap = folder / "snapshots" / p.commit / f.filename
    partial = blobs / (f.etag + ".incomplete")
    refs = folder / "refs" / p.target.revision
    # every place written, removed or linked below stays in the repository's folder, links resolved
    _check_inside(p.target, hub.cache(), folder)
    _check_inside(p.target, folder, blobs, blob, partial, snap.parent, refs)
    blobs.mkdir(parents=True, exist_ok=True)
    _check_inside(p.target, folder, blobs, blob, partial)
    if blob.exists() and blob.stat().st_size == f.size:
        _link(snap, blob)
        return "done", snap, blob
    part = _Partial.resume(partial, f)
    state = "done"
    if part.have < f.size:
        state = _transfer(p, part, total, lambda have: report(base + have, f.filename), stop)
    if state == "cancel":
        part.path.unlink(missing_ok=True)
        return "cancelled", snap, blob
    if state == "pause":
        return "paused", snap, blob
    _verify(p, part)
    os.replace(part.path, blob)
    _check_inside(p.target, folder, snap.parent)
    _link(snap, blob)
    refs.parent.mkdir(parents=True, exist_ok=True)
    paths.atomic_write_text(refs, p.commit)
    return "done", snap, blob


class _Meter:
    """Speed over the last seconds, and the ETA from it."""

    def __init__(self, start_bytes: int):
        self.samples: list[tuple[float, int]] = [(time.monotonic(), start_bytes)]

    def add(self, done: int) -> float:
        now = time.monotonic()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > 5.0:
            self.samples.pop(0)
        t0, b0 = self.samples[0]
        return (done - b0) / (now - t0) if now > t0 else 0.0


def download(name: str, listener: Callable[[Progress], None] | None = None,
             stop: Callable[[], str | None] | None = None, check_disk: bool = True,
             min_interval: float = 0.2) -> Progress:
    """Fetch a model (resuming what is on disk) and verify it; returns the final Progress.

    ``stop()`` returning "pause" keeps the partial file, "cancel" deletes it.
    Raises a :class:`DownloadError` subclass on failure.
    """
    stop = stop or (lambda: None)
    listener = listener or (lambda pr: None)
    t = target(name)
    existing = records.ready_path(t.name)
    if existing:
        pr = Progress(t.name, "ready", 0, 0)
        listener(pr)
        return pr
    p = plan(t)
    if check_disk:
        check_space(p)
    total = p.total_bytes
    meter = _Meter(partial_bytes(p))
    last = [0.0]

    def report(done: int, filename: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - last[0] < min_interval:
            return
        last[0] = now
        speed = meter.add(done)
        eta = (total - done) / speed if speed > 0 else None
        listener(Progress(t.name, "downloading", done, total, speed, eta, filename))

    base = 0
    done_files = []
    report(partial_bytes(p), p.files[0].filename if p.files else "", force=True)
    try:
        for f in p.files:
            state, snap, blob = _fetch_file(p, f, base, total, report, stop)
            if state in ("paused", "cancelled"):
                pr = Progress(t.name, state, partial_bytes(p) if state == "paused" else 0, total,
                              filename=f.filename)
                listener(pr)
                return pr
            done_files.append((f, snap, blob))
            base += f.size
        path = _save_record(p, done_files)
    except OSError as exc:  # mkdir, rename, link or the record: said in words, never a traceback
        if paths.is_no_space(exc):
            raise DiskFullError(t.name, path=str(getattr(exc, "filename", "") or hub.cache()), partial_bytes=0,
                                total_bytes=total, where=str(hub.cache())) from exc
        raise CacheError(t.name, where=str(hub.repo_folder(t.repo)), reason=exc.strerror or str(exc)) from exc
    if not t.catalog and t.single_file:
        try:
            store.add_local(path, _local_name(t))
        except store.ModelError as exc:
            log.warning("downloaded %s but it cannot be used: %s", t.name, exc.problem)
    pr = Progress(t.name, "ready", total, total, filename=path)
    listener(pr)
    return pr


def _local_name(t: Target) -> str:
    stem = Path(t.files[0]).stem.lower() if t.files else t.repo.split("/")[-1].lower()
    return stem


# -- the queue ------------------------------------------------------------------------------------------------

@dataclass
class Job:
    name: str
    state: str = "queued"
    done_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float = 0.0
    eta_s: float | None = None
    error: dict | None = None
    _stop: _Stop = field(default_factory=_Stop, repr=False)

    @property
    def message(self) -> str:
        return self.error["message"] if self.error else ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_stop", None)
        return d


class DownloadManager:
    """Several downloads, ``max_parallel`` at a time, each in its own thread.

    Listeners get ``(job)`` from worker threads (the desktop forwards them
    through a Qt signal). The queue is saved, so paused and waiting downloads
    come back after a restart (paused: their partial files are on disk).
    """

    def __init__(self, max_parallel: int = 1, check_disk: bool = True, autostart: bool = True):
        self.max_parallel = max_parallel
        self.check_disk = check_disk
        self.autostart = autostart
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.RLock()
        self._listeners: list[Callable[[Job], None]] = []
        self._restore()

    # persistence
    def _queue_path(self) -> Path:
        return paths.data_dir() / "downloads" / "queue.json"

    def _save(self) -> None:
        with self._lock:
            data = [{"name": j.name, "state": j.state, "done_bytes": j.done_bytes, "total_bytes": j.total_bytes}
                    for j in self._jobs.values() if j.state in ("queued", "downloading", "paused", "failed")]
        paths.atomic_write_text(self._queue_path(), json.dumps(data, indent=2))

    def _restore(self) -> None:
        try:
            data = json.loads(self._queue_path().read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        for d in data:
            # after a restart nothing is running: what was under way waits, paused, for the user
            state = "paused" if d.get("state") in ("downloading", "paused") else d.get("state", "queued")
            self._jobs[d["name"]] = Job(d["name"], "paused" if state == "queued" else state,
                                        int(d.get("done_bytes", 0)), int(d.get("total_bytes", 0)))

    # listeners
    def subscribe(self, listener: Callable[[Job], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, job: Job) -> None:
        for cb in list(self._listeners):
            try:
                cb(job)
            except Exception:
                log.exception("download listener failed")

    # API
    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def job(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def add(self, name: str) -> Job:
        with self._lock:
            job = self._jobs.get(name)
            if job is None or job.state in ("cancelled", "failed", "ready"):
                job = Job(name)
                self._jobs[name] = job
            elif job.state == "paused":
                job.state = "queued"
        self._save()
        self._emit(job)
        self._pump()
        return job

    def pause(self, name: str) -> None:
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return
            if job.state == "downloading":
                job._stop.why = "pause"
            elif job.state == "queued":
                job.state = "paused"
                self._emit(job)
        self._save()

    def resume(self, name: str) -> None:
        self.add(name)

    def cancel(self, name: str) -> None:
        with self._lock:
            job = self._jobs.get(name)
            if job is None:
                return
            if job.state == "downloading":
                job._stop.why = "cancel"
                return
            job.state = "cancelled"
        try:
            p = plan(target(name))
            for f in p.files:
                (hub.repo_folder(p.target.repo) / "blobs" / (f.etag + ".incomplete")).unlink(missing_ok=True)
        except DownloadError as exc:
            log.info("could not remove the partial files of %s: %s", name, exc.message)
        self._save()
        self._emit(job)

    def remove(self, name: str) -> None:
        with self._lock:
            job = self._jobs.get(name)
            if job and job.state not in ("downloading",):
                del self._jobs[name]
        self._save()

    def wait(self, timeout: float | None = None) -> None:
        for t in list(self._threads.values()):
            t.join(timeout)

    def _pump(self) -> None:
        with self._lock:
            running = sum(1 for j in self._jobs.values() if j.state == "downloading")
            for job in self._jobs.values():
                if running >= self.max_parallel:
                    break
                if job.state == "queued":
                    job.state = "downloading"
                    job._stop = _Stop()
                    th = threading.Thread(target=self._run, args=(job,), name=f"download-{job.name}", daemon=True)
                    self._threads[job.name] = th
                    running += 1
                    th.start()

    def _run(self, job: Job) -> None:
        job.error = None
        self._emit(job)

        def on_progress(pr: Progress) -> None:
            job.done_bytes, job.total_bytes, job.speed_bps, job.eta_s = (
                pr.done_bytes, pr.total_bytes or job.total_bytes, pr.speed_bps, pr.eta_s)
            if pr.state in ("downloading",):
                self._emit(job)

        try:
            final = download(job.name, on_progress, job._stop, check_disk=self.check_disk)
            job.state = final.state
            if final.state == "ready":
                job.done_bytes = job.total_bytes = final.total_bytes or job.total_bytes
            job.speed_bps, job.eta_s = 0.0, None
        except DownloadError as exc:
            job.state, job.error = "failed", exc.to_dict()
        except Exception as exc:  # a bug must still reach the user, not vanish in a thread
            log.exception("download of %s crashed", job.name)
            job.state, job.error = "failed", {"kind": "bug", "message": f"{type(exc).__name__}: {exc}"}
        self._save()
        self._emit(job)
        self._pump()
