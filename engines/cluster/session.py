"""Talking to a configured cluster: the right credentials for each call, and what Ember launched there.

Listing and chatting use the API key when there is one, else the admin's token;
launching and stopping need the admin's login. A token is reused for a while (the
gateway asks the cluster's model list every 30 s and should not log in each time).
The plans Ember launched are remembered per cluster and uid, so a later chat's
diagnosis knows the context and slots it launched with, as locally.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from engines import paths
from engines.cluster import store
from engines.cluster.store import Cluster
from engines.cluster.xinference import Client, ClusterError, Failure

log = logging.getLogger(__name__)

TOKEN_TTL = 20 * 60.0  # seconds a login is reused (Xinference's tokens last longer)

_tokens: dict[tuple[str, str, str], tuple[float, str]] = {}
_lock = threading.Lock()


def key_only_message(cluster: Cluster) -> str:
    return (f"Launching and stopping models on {cluster.name} needs an admin login: API keys can only access model "
            f"query and inference endpoints. Add the cluster again with an admin user: ember cluster add "
            f"{cluster.name} {cluster.url} --user NAME --password-env VARIABLE")


def connect(cluster: Cluster, admin: bool = False, timeout: float = 10.0) -> Client:
    """A client with the cluster's credentials; ``admin``: logged in, else ClusterError(KEY_ONLY) at once."""
    creds = store.credentials(cluster)
    client = Client(cluster.url, api_key=creds.api_key, timeout=timeout)
    if creds.user and creds.password:
        client.token = _token(cluster, client, creds.user, creds.password)
    elif admin and creds.api_key:
        client.close()
        raise ClusterError(Failure.KEY_ONLY, key_only_message(cluster), 403,
                           "API keys can only access model query and inference endpoints")
    return client


def _token(cluster: Cluster, client: Client, user: str, password: str) -> str:
    cache_key = (cluster.url, user, password)
    with _lock:
        hit = _tokens.get(cache_key)
        if hit and time.monotonic() - hit[0] < TOKEN_TTL:
            return hit[1]
    token = client.login(user, password)
    with _lock:
        _tokens[cache_key] = (time.monotonic(), token)
    return token


def forget_tokens() -> None:
    """Drop every cached login (a cluster was removed or its password changed)."""
    with _lock:
        _tokens.clear()


# -- what Ember launched ----------------------------------------------------------------------------

def _launched_file() -> Path:
    return paths.config_dir() / "cluster_launches.json"


def remember(cluster: str, uid: str, engine: str, params: dict, model: str | None) -> None:
    """Keep the parameters of a launch (read back by :func:`launched`)."""
    with _lock:
        data = _read_launched()
        data.setdefault(cluster, {})[uid] = {"engine": engine, "params": params, "model": model}
        paths.atomic_write_text(_launched_file(), json.dumps(data, indent=2, default=str))


def forget(cluster: str, uid: str | None = None) -> None:
    with _lock:
        data = _read_launched()
        if uid is None:
            data.pop(cluster, None)
        else:
            data.get(cluster, {}).pop(uid, None)
        paths.atomic_write_text(_launched_file(), json.dumps(data, indent=2, default=str))


def launched(cluster: str, uid: str) -> dict | None:
    """``{"engine", "params", "model"}`` of Ember's launch of ``uid`` there; None when Ember did not launch it."""
    return _read_launched().get(cluster, {}).get(uid)


def _read_launched() -> dict:
    try:
        data = json.loads(_launched_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s); ignoring it", _launched_file(), exc)
        return {}
    return data if isinstance(data, dict) else {}
