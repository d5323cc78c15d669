"""What the Hub lists for the catalog's GGUF repositories: the recorded listings and a refreshed copy.

The catalog's file names and sizes were checked against public listings kept
by other projects (``resources/hub_listings.json``: each source a file at a
pinned git revision). Repositories change after that: files are re-published
under new names, split differently, re-quantized. :func:`refresh` re-lists
each repository through ``huggingface_hub`` and keeps what it found in
``<data>/hub_listings_cache.json``, so the catalog (:mod:`engines.models.catalog`)
downloads what the Hub has *now*, offline too, and can say which entries changed.

A listing that cannot be read (offline, a 404, a gated repository) changes
nothing: the repository keeps its previous listing and the failure is reported.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from engines import paths
from engines.models import hub

log = logging.getLogger(__name__)

#: A refreshed listing younger than this is reused without asking the Hub (``max_age``).
DAY_S = 24 * 3600
CACHE_NAME = "hub_listings_cache.json"


@dataclass(frozen=True)
class HubFile:
    """One file of a repository as a listing gives it."""

    name: str
    size_bytes: int | None
    sha256: str | None = None


@dataclass
class RepoListing:
    """A repository's files at a revision, and when that was read."""

    repo: str
    revision: str
    files: dict[str, HubFile]
    listed_at: float

    def to_dict(self) -> dict:
        return {"repo": self.repo, "revision": self.revision, "listed_at": self.listed_at,
                "files": [{"name": f.name, "size_bytes": f.size_bytes, "sha256": f.sha256}
                          for f in self.files.values()]}

    @classmethod
    def from_dict(cls, d: dict) -> "RepoListing":
        files = {f["name"]: HubFile(f["name"], f.get("size_bytes"), f.get("sha256")) for f in d.get("files", [])}
        return cls(d["repo"], d.get("revision") or "", files, float(d.get("listed_at") or 0))


@dataclass(frozen=True)
class Change:
    """How one catalog variant differs from what the Hub lists now, in words and as data."""

    variant: str
    kind: str          # "size", "sha256", "renamed", "missing", "revision"
    detail: str
    old: object = None
    new: object = None


@dataclass
class RefreshResult:
    """What a refresh did: repositories listed anew, reused from the cache, failed; and the changes."""

    listed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    offline: bool = False
    offline_reason: str = ""
    cached_at: float | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line for people: how many repositories, what changed, what failed."""
        parts = []
        if self.offline:
            parts.append(f"the Hub was not asked ({self.offline_reason})")
        if self.listed:
            parts.append(f"listed {len(self.listed)} repositories on the Hub")
        if self.reused:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.cached_at)) if self.cached_at else "earlier"
            parts.append(f"used the listing saved {when} for {len(self.reused)}")
        if self.failed:
            parts.append(f"could not list {len(self.failed)} (the catalog keeps what it had for them)")
        changed = len({c.variant for c in self.changes})
        parts.append(f"{changed} catalog entr{'y' if changed == 1 else 'ies'} changed" if changed
                     else "no catalog entry changed")
        text = "; ".join(parts)
        return text[:1].upper() + text[1:]


# -- the recorded listings (shipped with Ember) ----------------------------------------------------------

@functools.lru_cache(maxsize=1)
def recorded() -> dict:
    """``resources/hub_listings.json``: the sources and, per (source, repo), the files they list."""
    return json.loads(resources.files("resources").joinpath("hub_listings.json").read_text(encoding="utf-8"))


def recorded_files(source: str, repo: str) -> dict[str, dict]:
    """File name -> {size_bytes, sha256, parts} as the recorded ``source`` lists ``repo``."""
    for listing in recorded()["listings"]:
        if listing["source"] == source and listing["repo"] == repo:
            return {f["name"]: f for f in listing["files"]}
    return {}


# -- the refreshed copy ------------------------------------------------------------------------------------

def cache_path() -> Path:
    return paths.data_dir() / CACHE_NAME


def load_cache() -> dict[str, RepoListing]:
    """The refreshed listings saved on this computer (empty when none or unreadable)."""
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return {d["repo"]: RepoListing.from_dict(d) for d in data.get("repos", [])}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the saved Hub listings at %s: %s", cache_path(), exc)
        return {}


def _save_cache(listings: dict[str, RepoListing]) -> None:
    data = {"schema_version": 1, "repos": [listings[r].to_dict() for r in sorted(listings)]}
    paths.atomic_write_text(cache_path(), json.dumps(data, indent=1))


def list_repo(repo: str, revision: str = "main") -> RepoListing:
    """Every file of ``repo`` with its size and sha256, from the Hub (raises what huggingface_hub raises)."""
    from huggingface_hub import HfApi  # lazy: huggingface_hub costs a few hundred ms at import
    info = HfApi(endpoint=hub.endpoint(), token=hub.token() or False).model_info(
        repo, revision=revision, files_metadata=True)
    files = {}
    for s in info.siblings or []:
        lfs = s.lfs
        size = int(lfs.size) if lfs and lfs.size is not None else (int(s.size) if s.size is not None else None)
        files[s.rfilename] = HubFile(s.rfilename, size, lfs.sha256 if lfs else None)
    return RepoListing(repo, info.sha or revision, files, time.time())


def _why(exc: Exception) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    name = type(exc).__name__
    if name == "GatedRepoError" or status in (401, 403):
        return "the repository is gated: it needs a Hugging Face token with access"
    if name == "RepositoryNotFoundError" or status == 404:
        return "the repository is not on the Hub (moved or deleted)"
    return f"{name}: {exc}"[:200]


def refresh(repos: Iterable[str], max_age: float | None = None,
            lister: Callable[[str], RepoListing] = list_repo) -> tuple[dict[str, RepoListing], RefreshResult]:
    """List ``repos`` on the Hub and save what was found; (all saved listings, what happened).

    ``max_age``: reuse a saved listing younger than this many seconds (None: list
    every repository again). Offline (``HF_HUB_OFFLINE``) nothing is asked: the
    saved listings are returned as they are. A repository that fails keeps its
    saved listing, if any.
    """
    saved = load_cache()
    result = RefreshResult()
    repos = sorted(set(repos))
    times = [saved[r].listed_at for r in repos if r in saved]
    result.cached_at = min(times) if times else None
    reach = hub.Reach(False, "HF_HUB_OFFLINE is set") if hub.offline() else hub.reachable()
    if not reach.online:  # one question, not one time-out per repository
        result.offline = True
        result.offline_reason = reach.reason
        result.reused = [r for r in repos if r in saved]
        return saved, result
    now = time.time()
    for repo in repos:
        old = saved.get(repo)
        if old is not None and max_age is not None and now - old.listed_at < max_age:
            result.reused.append(repo)
            continue
        try:
            saved[repo] = lister(repo)
            result.listed.append(repo)
        except Exception as exc:  # one repository's failure must not stop the others
            result.failed[repo] = _why(exc)
            log.info("could not list %s on the Hub: %s", repo, result.failed[repo])
            if old is not None:
                result.reused.append(repo)
    if result.listed:
        _save_cache(saved)
    return saved, result
