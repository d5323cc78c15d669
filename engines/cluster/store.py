"""The clusters the user added: a name, the URL, and where each credential lives (never the secret).

An admin login (user and password) may launch and stop models; an API key may only
list and chat. Either secret is in the OS keyring (:mod:`engines.secrets`, the same
store remote endpoints use) or in an environment variable the user names. The list
is ``config_dir()/clusters.json``.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from engines import paths, secrets

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ClusterConfigError(ValueError):
    """A cluster cannot be added or used as configured; ``problem`` says how to fix it."""

    def __init__(self, name: str, problem: str, kind: str = "invalid"):
        self.name, self.problem, self.kind = name, problem, kind
        super().__init__(f"cluster {name}: {problem}" if name else problem)

    @property
    def message(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Secret:
    """Where one secret lives: ``keyring`` (account ``cluster:NAME:what``), ``env`` (the variable), or nowhere."""

    source: str = "none"        # keyring | env | none
    env: str | None = None

    def read(self, account: str) -> str | None:
        if self.source == "keyring":
            return secrets.read(account)
        if self.source == "env":
            return secrets.from_env(self.env)
        return None

    def describe(self) -> str:
        return {"keyring": "in the keyring", "env": f"from ${self.env}"}.get(self.source, "none")


@dataclass(frozen=True)
class Cluster:
    name: str
    url: str                     # the cluster's root (http://host:9997), not /v1
    user: str | None = None
    password: Secret = Secret()
    api_key: Secret = Secret()

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    @property
    def can_admin(self) -> bool:
        """It may launch and stop models (an admin login is configured)."""
        return bool(self.user) and self.password.source != "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Cluster":
        return cls(d["name"], d["url"], d.get("user"), Secret(**(d.get("password") or {})),
                   Secret(**(d.get("api_key") or {})))


@dataclass(frozen=True)
class Credentials:
    """The secrets read now: what the client logs in with."""

    user: str | None
    password: str | None
    api_key: str | None


def _file() -> Path:
    return paths.config_dir() / "clusters.json"


_lock = threading.Lock()


def _account(name: str, what: str) -> str:
    return f"cluster:{name}:{what}"


def normalize_url(url: str) -> str:
    """``http://host:9997/`` or ``.../v1`` → ``http://host:9997``: the cluster's root."""
    url = url.strip()
    if not re.match(r"^https?://", url):
        raise ClusterConfigError("", f"{url!r} is not an http:// or https:// URL", "bad_url")
    parts = urlsplit(url)
    if not parts.hostname:
        raise ClusterConfigError("", f"{url!r} has no host", "bad_url")
    path = re.sub(r"/v1/?$", "", parts.path.rstrip("/"))
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _load() -> dict[str, Cluster]:
    try:
        data = json.loads(_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("cluster list %s unreadable (%s); ignoring it", _file(), exc)
        return {}
    out = {}
    for item in data.get("clusters", []) if isinstance(data, dict) else []:
        try:
            c = Cluster.from_dict(item)
            out[c.name] = c
        except (KeyError, TypeError):
            continue
    return out


def _save(clusters: dict[str, Cluster]) -> None:
    paths.atomic_write_text(_file(), json.dumps({"clusters": [c.to_dict() for c in clusters.values()]}, indent=2))


def _secret(name: str, what: str, value: str | None, env: str | None, flag: str) -> Secret:
    if value and env:
        raise ClusterConfigError(name, f"give the {what} or the name of a variable holding it, not both", "bad_secret")
    if value:
        try:
            secrets.store(_account(name, what), value)
        except secrets.NoKeyring:
            raise ClusterConfigError(name, f"there is no keyring on this computer to keep the {what} in; put it in "
                                           f"an environment variable and add the cluster with {flag} VARIABLE",
                                     "no_keyring") from None
        return Secret("keyring")
    if env:
        if not secrets.valid_env_name(env):
            raise ClusterConfigError(name, f"{env!r} is not an environment variable name", "bad_secret")
        return Secret("env", env)
    return Secret()


def make(name: str, url: str, user: str | None = None, password: str | None = None, password_env: str | None = None,
         api_key: str | None = None, key_env: str | None = None) -> Cluster:
    """A cluster entry, its secrets put in the keyring (not saved to the list yet: :func:`save`)."""
    name = name.strip()
    if not NAME.fullmatch(name):
        raise ClusterConfigError(name, "names use letters, digits, '.', '_' and '-' (at most 64)", "bad_name")
    try:
        url = normalize_url(url)
    except ClusterConfigError as exc:
        raise ClusterConfigError(name, exc.problem, exc.kind) from None
    if (password or password_env) and not user:
        raise ClusterConfigError(name, "a password needs the user it belongs to (--user)", "bad_secret")
    if user and not (password or password_env):
        raise ClusterConfigError(name, f"the user {user} needs a password: --password-env VARIABLE "
                                       "(or --password-stdin to keep it in the keyring)", "bad_secret")
    pw = _secret(name, "password", password, password_env, "--password-env")
    key = _secret(name, "api_key", api_key, key_env, "--key-env")
    return Cluster(name, url, user or None, pw, key)


def save(cluster: Cluster) -> None:
    with _lock:
        clusters = _load()
        clusters[cluster.name] = cluster
        _save(clusters)


def remove(name: str) -> bool:
    with _lock:
        clusters = _load()
        cluster = clusters.pop(name, None)
        if cluster is None:
            return False
        _save(clusters)
    for what, secret in (("password", cluster.password), ("api_key", cluster.api_key)):
        if secret.source == "keyring":
            secrets.forget(_account(name, what))
    return True


def list_clusters() -> list[Cluster]:
    return list(_load().values())


def get(name: str) -> Cluster:
    cluster = _load().get(name)
    if cluster is None:
        raise ClusterConfigError(name, "no such cluster; add it with: ember cluster add NAME URL", "unknown")
    return cluster


def credentials(cluster: Cluster) -> Credentials:
    """The secrets as they are now (a variable may have been set or unset since the cluster was added)."""
    password = cluster.password.read(_account(cluster.name, "password"))
    if cluster.password.source == "env" and password is None:
        raise ClusterConfigError(cluster.name, f"${cluster.password.env} is not set; it holds the password of "
                                               f"{cluster.user}", "secret_missing")
    key = cluster.api_key.read(_account(cluster.name, "api_key"))
    if cluster.api_key.source == "env" and key is None:
        raise ClusterConfigError(cluster.name, f"${cluster.api_key.env} is not set; it holds the API key",
                                 "secret_missing")
    return Credentials(cluster.user, password, key)
