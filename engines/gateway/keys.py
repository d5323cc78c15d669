"""The gateway's API key: made once, kept across restarts, readable by this user only.

Tools are configured once with the key, so it must survive a restart; it lives in
its own file (mode 0600) beside the settings, not in settings.json, so that
sharing one's settings never shares the key.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from engines import paths

log = logging.getLogger(__name__)

PREFIX = "ember-"


def path() -> Path:
    return paths.config_dir() / "api_key"


def _write(key: str) -> None:
    p = path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key + "\n")
        os.replace(tmp, p)
    except OSError as exc:  # a full disk: nothing half-written is left, and the error says where
        tmp.unlink(missing_ok=True)
        if paths.is_no_space(exc):
            raise paths.no_space(exc, p.parent, "the local API's key") from exc
        raise


def get() -> str:
    """The key, made on first use. A file someone else can read is tightened to 0600."""
    p = path()
    try:
        key = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    if not key:
        return regenerate()
    if os.name == "posix" and p.stat().st_mode & 0o077:
        log.warning("%s was readable by others; made it private", p)
        os.chmod(p, 0o600)
    return key


def regenerate() -> str:
    """A new key; tools configured with the old one get 401 from now on."""
    key = PREFIX + secrets.token_urlsafe(24)
    _write(key)
    log.info("new gateway API key written to %s", path())
    return key
