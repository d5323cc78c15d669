"""Secrets Ember uses to reach servers: kept in the OS keyring or read from a named environment variable.

One place for remote endpoints' API keys (:mod:`engines.chat.remotes`) and a cluster's
password and API key (:mod:`engines.cluster.store`), so both keep secrets the same
way: the keyring (service ``ember``, one account per secret) when the computer has
one, else an environment variable the user names (a headless Linux box). A secret is
never written to Ember's files.
"""
from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)

SERVICE = "ember"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class NoKeyring(RuntimeError):
    """This computer has no keyring backend that stores secrets."""


def keyring_available() -> bool:
    """True when the OS has a keyring backend that stores secrets (not the 'fail' backend)."""
    try:
        import keyring  # optional: a keyring backend may be missing or broken on this computer
        kr = keyring.get_keyring()
    except Exception:
        return False
    return getattr(kr, "priority", 0) > 0 and type(kr).__module__ != "keyring.backends.fail"


def store(account: str, secret: str) -> None:
    """Keep ``secret`` in the keyring under ``account``; NoKeyring when there is none."""
    if not keyring_available():
        raise NoKeyring("there is no keyring on this computer")
    import keyring  # optional dependency, present when keyring_available() said so
    keyring.set_password(SERVICE, account, secret)


def read(account: str) -> str | None:
    """The keyring's secret for ``account``; None without a keyring or an entry."""
    if not keyring_available():
        return None
    import keyring  # optional dependency, present when keyring_available() said so
    return keyring.get_password(SERVICE, account)


def forget(account: str) -> None:
    """Delete ``account``'s secret; nothing to do when it is already gone or there is no keyring."""
    if not keyring_available():
        return
    import keyring  # optional dependency, present when keyring_available() said so
    try:
        keyring.delete_password(SERVICE, account)
    except Exception as exc:  # already gone: nothing to remove
        log.info("no keyring entry to delete for %s: %s", account, exc)


def valid_env_name(name: str | None) -> bool:
    return bool(name) and ENV_NAME.fullmatch(name) is not None


def from_env(name: str | None) -> str | None:
    """The variable's value; None when it is unset or empty."""
    return (os.environ.get(name) or None) if name else None
