"""Remote OpenAI-compatible endpoints: an Xinference cluster, a vLLM or SGLang server, any URL.

When a model outgrows this computer, Ember talks to a server that already does
the multi-GPU / multi-node work. A remote is a name, a URL and where its API key
comes from:

- ``keyring``: the OS keyring (the ``keyring`` package), service ``ember``;
- ``env``: an environment variable named in the remote's entry (for machines
  without a keyring, like a headless Linux box);
- ``none``: the server needs no key.

The key itself is never written to Ember's files. The list lives in
``config_dir()/remotes.json``. :func:`endpoints` turns each remote into one
:class:`engines.chat.endpoint.Endpoint` per model the server lists at ``/v1/models``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from engines import paths, secrets
from engines.chat.client import list_models
from engines.chat.endpoint import Endpoint

log = logging.getLogger(__name__)

SERVICE = secrets.SERVICE
LIST_TTL = 30.0  # seconds a server's model list is reused


class RemoteError(ValueError):
    """A remote cannot be added or used, with the fix in words."""

    def __init__(self, name: str, problem: str, kind: str = "invalid"):
        self.name, self.problem, self.kind = name, problem, kind
        super().__init__(f"remote {name}: {problem}")

    @property
    def message(self) -> str:
        return str(self)


@dataclass
class Remote:
    name: str
    url: str                    # the OpenAI base URL, ending in /v1 (or the path the user gave)
    key_source: str = "none"    # keyring | env | none
    key_env: str | None = None  # the variable's name when key_source == "env"


def _file() -> Path:
    return paths.config_dir() / "remotes.json"


_lock = threading.Lock()
_models_cache: dict[str, tuple[float, list[str]]] = {}


def normalize_url(url: str) -> str:
    """``http://host:9997`` -> ``http://host:9997/v1``; a URL with a path is kept as given."""
    url = url.strip()
    if not re.match(r"^https?://", url):
        raise RemoteError("", f"{url!r} is not an http:// or https:// URL", "bad_url")
    parts = urlsplit(url)
    if not parts.hostname:
        raise RemoteError("", f"{url!r} has no host", "bad_url")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise RemoteError("", f"{url!r} has no valid port: a port is a number from 1 to 65535", "bad_url")
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _load() -> dict[str, Remote]:
    try:
        data = json.loads(_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("remote list %s unreadable (%s); ignoring it", _file(), exc)
        return {}
    out = {}
    for item in data.get("remotes", []) if isinstance(data, dict) else []:
        try:
            r = Remote(**item)
            out[r.name] = r
        except TypeError:
            continue
    return out


def _save(remotes: dict[str, Remote]) -> None:
    paths.atomic_write_text(_file(), json.dumps({"remotes": [asdict(r) for r in remotes.values()]}, indent=2))


keyring_available = secrets.keyring_available


def _account(name: str) -> str:
    return f"remote:{name}"


def check_new(name: str, url: str, key: str | None = None, key_env: str | None = None,
              replace: bool = False) -> Remote:
    """The remote :func:`add` would save, checked first, with no side effect; :class:`RemoteError` says
    what is wrong (kind "exists" for a name already taken, unless ``replace``)."""
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise RemoteError(name, "names use letters, digits, '.', '_' and '-' (at most 64)", "bad_name")
    try:
        url = normalize_url(url)
    except RemoteError as exc:
        raise RemoteError(name, exc.problem, exc.kind) from None
    if key and key_env:
        raise RemoteError(name, "give the key or the name of a variable holding it, not both", "bad_key")
    if key_env is not None:
        if not secrets.valid_env_name(key_env):
            raise RemoteError(name, f"{key_env!r} is not an environment variable name", "bad_key")
        if not os.environ.get(key_env):
            raise RemoteError(name, f"the variable {key_env} is not set here: set it to the API key "
                                    f"(export {key_env}=...) and add the remote again", "key_env_unset")
    existing = _load().get(name)
    if existing is not None and not replace:
        raise RemoteError(name, f"already exists ({existing.url}); remove it first, or replace it "
                                "with --replace", "exists")
    source = "keyring" if key else "env" if key_env else "none"
    return Remote(name, url, source, key_env if key_env else None)


def probe(remote: Remote, key: str | None = None, timeout: float = 5.0) -> list[str]:
    """Ask a remote (not saved yet) for its models with ``key``: the check before :func:`add` keeps it.
    Raises the client's errors (``StreamBroken`` when nothing answers), which the diagnosis reads."""
    if key is None and remote.key_source == "env":
        key = secrets.from_env(remote.key_env)
    return [m.get("id") for m in list_models(remote.url, key, timeout) if m.get("id")]


def add(name: str, url: str, key: str | None = None, key_env: str | None = None, replace: bool = False) -> Remote:
    """Add a remote (``replace``: one of the same name too). ``key`` goes to the keyring; without one,
    use ``key_env``. Checked by :func:`check_new` first."""
    check_new(name, url, key, key_env, replace)
    name, url = name.strip(), normalize_url(url)
    if key:
        try:
            secrets.store(_account(name), key)
        except secrets.NoKeyring:
            raise RemoteError(name, "there is no keyring on this computer to keep the API key in; put the key in "
                                    "an environment variable and add the remote with --key-env VARIABLE",
                              "no_keyring") from None
        remote = Remote(name, url, "keyring")
    elif key_env:
        remote = Remote(name, url, "env", key_env)
    else:
        remote = Remote(name, url, "none")
    return _keep(remote)


def _keep(remote: Remote) -> Remote:
    """Save ``remote`` (new or replacing one of its name); what was known of the old one is forgotten."""
    with _lock:
        remotes = _load()
        remotes[remote.name] = remote
        _save(remotes)
        _models_cache.pop(remote.name, None)
        _failures.pop(remote.name, None)
    return remote


def edit(name: str, url: str, key: str | None = None, key_env: str | None = None) -> Remote:
    """Change a remote's address or key (a diagnosis' "Edit the endpoint"); without a new key or variable
    it keeps the key it has. A name not known yet is added."""
    try:
        current = get(name)
    except RemoteError:
        current = None
    if key or key_env or current is None or current.key_source == "none":
        return add(name, url, key=key or None, key_env=key_env or None, replace=current is not None)
    try:
        url = normalize_url(url)
    except RemoteError as exc:
        raise RemoteError(name, exc.problem, exc.kind) from None
    remote = Remote(name, url, current.key_source, current.key_env)
    return _keep(remote)


def remove(name: str) -> bool:
    with _lock:
        remotes = _load()
        remote = remotes.pop(name, None)
        if remote is None:
            return False
        _save(remotes)
        _models_cache.pop(name, None)
    if remote.key_source == "keyring":
        secrets.forget(_account(name))
    return True


def list_remotes() -> list[Remote]:
    return list(_load().values())


def get(name: str) -> Remote:
    remote = _load().get(name)
    if remote is None:
        raise RemoteError(name, "no such remote; add it with: ember remote add NAME URL", "unknown")
    return remote


def api_key(remote: Remote) -> str | None:
    """The key from where the remote says it lives; None when it needs none or it is missing."""
    if remote.key_source == "keyring":
        return secrets.read(_account(remote.name))
    if remote.key_source == "env":
        return secrets.from_env(remote.key_env)
    return None


def models(remote: Remote, timeout: float = 5.0, use_cache: bool = True) -> list[str]:
    """Model ids the server lists; raises the client's EngineHTTPError / httpx errors."""
    cached = _models_cache.get(remote.name)
    if use_cache and cached and time.monotonic() - cached[0] < LIST_TTL:
        return cached[1]
    ids = [m.get("id") for m in list_models(remote.url, api_key(remote), timeout) if m.get("id")]
    _models_cache[remote.name] = (time.monotonic(), ids)
    return ids


_failures: dict[str, tuple[float, str]] = {}


def last_error(name: str) -> str | None:
    """Why a remote was left out of :func:`endpoints` lately (None when it answered)."""
    failed = _failures.get(name)
    return failed[1] if failed else None


def endpoints(timeout: float = 3.0) -> list[Endpoint]:
    """One Endpoint per model of each reachable remote.

    A remote that does not answer is left out (see :func:`last_error`) and not asked
    again for ``LIST_TTL`` seconds, so a dead server does not slow every call down.
    """
    out = []
    for remote in list_remotes():
        failed = _failures.get(remote.name)
        if failed and time.monotonic() - failed[0] < LIST_TTL:
            continue
        try:
            ids = models(remote, timeout)
            _failures.pop(remote.name, None)
        except Exception as exc:
            log.info("remote %s is not answering: %s", remote.name, exc)
            _failures[remote.name] = (time.monotonic(), f"{type(exc).__name__}: {exc}")
            continue
        key = api_key(remote)
        for model_id in ids:
            out.append(Endpoint(f"{remote.name}/{model_id}", remote.url, key, "remote", model_id, None))
    return out


def endpoint(name: str, model_id: str | None = None) -> Endpoint:
    """The Endpoint for ``name`` (a remote) and a model it serves (its first when not given)."""
    remote = get(name)
    if model_id is None:
        ids = models(remote)
        if not ids:
            raise RemoteError(name, "the server lists no models", "no_models")
        model_id = ids[0]
    return Endpoint(f"{remote.name}/{model_id}", remote.url, api_key(remote), "remote", model_id, None)
