"""Where the Hugging Face Hub is and how to talk to it, read from the environment at call time.

Downloads and remote GGUF headers both ask the Hub; they share this one place
for ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, the token (``HF_TOKEN`` / ``hf auth
login``) and the standard cache layout (``HF_HUB_CACHE`` / ``HF_HOME``), so
neither reaches into the other. :func:`reachable` tells whether the Hub
answers at all (the models window says "offline" plainly when it does not).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")


def endpoint() -> str:
    """The Hub's base URL, without a trailing slash."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    """True when the user said not to touch the network (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cache() -> Path:
    """The Hub cache folder, where ``hf_hub_download`` would put files too."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def repo_folder(repo: str) -> Path:
    """``models--owner--name`` in the cache: its ``blobs/``, ``snapshots/`` and ``refs/``."""
    return cache() / ("models--" + repo.replace("/", "--"))


def token() -> str | None:
    """The user's Hub token, or None for anonymous access."""
    try:
        from huggingface_hub import get_token  # lazy: huggingface_hub costs a few hundred ms at import
        return get_token()
    except Exception:  # a broken token file must not stop public downloads
        return os.environ.get("HF_TOKEN")


def headers() -> dict[str, str]:
    """HTTP headers for a Hub request: user agent and, when there is one, the token."""
    from huggingface_hub.utils import build_hf_headers  # lazy: huggingface_hub costs a few hundred ms at import
    return build_hf_headers(token=token() or False, library_name="ember")


def resolve_url(repo: str, revision: str, filename: str) -> str:
    """The URL of one file of a repository at a revision (the Hub redirects it to the bytes)."""
    return f"{endpoint()}/{repo}/resolve/{revision}/{quote(filename)}"


@dataclass(frozen=True)
class Reach:
    """Whether the Hub can be used now, and if not, why in words (``detail``: the raw error, for logs)."""

    online: bool
    reason: str = ""
    detail: str = ""


def reachable(timeout: float = 3.0) -> Reach:
    """Ask the Hub once (any HTTP answer counts as reachable); a few seconds at most, off the GUI thread."""
    if offline():
        return Reach(False, "downloads are turned off on this computer (HF_HUB_OFFLINE is set)")
    import httpx  # lazy: only the models window and the downloads ask
    host = urlsplit(endpoint()).netloc or endpoint()
    try:
        httpx.head(endpoint(), timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        log.info("the Hub at %s is not reachable: %s: %s", endpoint(), type(exc).__name__, exc)
        return Reach(False, f"Ember cannot reach {host}: this computer seems to be offline, "
                            "or the site is blocked", f"{type(exc).__name__}: {exc}")
    return Reach(True)
