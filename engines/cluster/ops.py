"""What the CLI, the gateway and the desktop do with clusters: add, look, launch, stop, route.

Each function takes a cluster's name, reads its entry and credentials
(:mod:`.store`), talks to it (:mod:`.xinference` through :mod:`.session`) and gives
typed answers: the desktop's models window and ``ember cluster models`` show the
same :class:`Overview`.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from engines.chat.endpoint import Endpoint
from engines.cluster import launching, session, store
from engines.cluster.launching import ClusterPlan
from engines.cluster.store import Cluster
from engines.cluster.xinference import ClusterError, ClusterInfo, Failure, LaunchState, RunningModel
from engines.models import store as model_store
from engines.running import backends

log = logging.getLogger(__name__)

LIST_TTL = 30.0  # seconds a cluster that did not answer is left out of the gateway's list
NO_AUTH_WARNING = ("{name} has no authentication: anyone who can reach {url} can launch and stop models on it "
                   "and read every conversation.")


@dataclass
class Added:
    cluster: Cluster
    info: ClusterInfo
    warning: str | None = None   # said to the user: a cluster without auth


def add(name: str, url: str, user: str | None = None, password: str | None = None, password_env: str | None = None,
        api_key: str | None = None, key_env: str | None = None) -> Added:
    """Ask the cluster what it is with these credentials, then keep it. Raises ClusterError / ClusterConfigError."""
    cluster = store.make(name, url, user, password, password_env, api_key, key_env)
    with session.connect(cluster) as client:
        info = client.info()
    warning = None
    if not info.auth:
        warning = NO_AUTH_WARNING.format(name=cluster.name, url=cluster.url)
    elif not (cluster.can_admin or cluster.api_key.source != "none"):
        raise ClusterError(Failure.AUTH_REQUIRED, f"{cluster.url} asks for a login: add it with --user NAME "
                                                  "--password-env VARIABLE, or --key-env VARIABLE for an API key", 401)
    elif not cluster.can_admin:
        warning = (f"{cluster.name} is reached with an API key: Ember can list and chat with its models, but "
                   "launching and stopping them needs an admin login (--user, --password-env).")
    store.save(cluster)
    return Added(cluster, info, warning)


def remove(name: str) -> bool:
    session.forget(name)
    session.forget_tokens()
    return store.remove(name)


# -- looking -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launchable:
    """A model the cluster can launch: one of Ember's (registered on first launch) or a built-in name."""

    name: str
    source: str                 # ember | builtin
    fit: str = "unknown"        # gpu | partial | cpu | none | unknown (judged against the cluster's devices)
    fit_words: str = ""


@dataclass
class Overview:
    cluster: Cluster
    info: ClusterInfo | None = None
    running: list[RunningModel] = field(default_factory=list)
    launchable: list[Launchable] = field(default_factory=list)
    builtin: list[str] = field(default_factory=list)
    error: ClusterError | store.ClusterConfigError | None = None
    files_reachable: bool = False

    @property
    def devices_line(self) -> str:
        """The cluster's workers in words (or why they are not shown)."""
        if self.info is None:
            return "not answering"
        if not self.info.devices_known:
            return "devices not told to an API key"
        parts = []
        for w in self.info.workers or []:
            gpus = f"{w.gpus.gpu_count} GPU{'s' if w.gpus.gpu_count > 1 else ''}" if w.gpus else "no GPU"
            mem = f", {w.memory_total_bytes / 2**30:.0f} GiB RAM" if w.memory_total_bytes else ""
            parts.append(f"{w.address}: {gpus}, {w.cpu_count or '?'} CPU cores{mem}")
        return "; ".join(parts) or "no workers"


def overview(name: str, with_builtin: bool = True) -> Overview:
    """The cluster, its running models and what it can launch; ``error`` set (not raised) when it fails."""
    cluster = store.get(name)
    out = Overview(cluster)
    try:
        with session.connect(cluster) as client:
            out.info = client.info()
            out.running = [_as_launched(name, m) for m in client.running()]
            if with_builtin:
                out.builtin = client.builtin_names()
    except (ClusterError, store.ClusterConfigError) as exc:
        out.error = exc
        return out
    out.files_reachable = launching.reaches_files(cluster.url)
    hw = launching.profile(out.info)
    if out.files_reachable:
        for spec in model_store.local_models(assemble_starter=False):
            if spec.format == "gguf" and spec.is_local:
                badge, words = launching.fit_on(hw, spec)
                out.launchable.append(Launchable(spec.name, "ember", badge, words))
    return out


def _as_launched(name: str, m: RunningModel) -> RunningModel:
    """The running model with the context Ember launched it with (the cluster lists its model's trained one)."""
    record = session.launched(name, m.uid)
    if not record:
        return m
    key = backends.get(record.get("engine") or "llamacpp").roles.context
    ctx = (record.get("params") or {}).get(key) if key else None
    return dataclasses.replace(m, context_length=int(ctx)) if ctx else m


def find_running(name: str, model: str) -> RunningModel | None:
    """The running model a user means by ``model``: its uid, Ember's name for it, or its model name."""
    with session.connect(store.get(name)) as client:
        running = client.running()
    want = {model, launching.uid_for(model)}
    return next((m for m in running if m.uid in want), None) or \
        next((m for m in running if m.model_name in want or m.model_name == _registered(model)), None)


def _registered(model: str) -> str | None:
    spec = launching.local_spec(model)
    return launching.registered_name(spec) if spec is not None else None


def plan_of_running(name: str, model: RunningModel) -> ClusterPlan:
    """The plan a running model was launched with: Ember's own record, else what the cluster lists."""
    record = session.launched(name, model.uid) or {}
    engine = record.get("engine") or launching.EMBER_ENGINES.get(model.engine or "", "llamacpp")
    params = dict(record.get("params") or {})
    ctx_key = backends.get(engine).roles.context
    if ctx_key and ctx_key not in params and model.context_length:
        params[ctx_key] = model.context_length
    spec = launching.local_spec(record.get("model") or "") if record.get("model") else None
    return ClusterPlan(name, model.uid, model.model_name, engine, params, dict(params), spec,
                       launching.unknown_machine(), model.replicas)


# -- launching and stopping ------------------------------------------------------------------------------

def plan(name: str, model: str, engine: str | None = None, overrides=None, replicas: int = 1,
         n_gpu: int | str | None = "auto", keep: bool = True, context: int | None = None) -> ClusterPlan:
    """``keep``: start from the parameters of Ember's last launch of this model there (``--set`` changes
    them), so applying a fix changes only what the fix names."""
    cluster = store.get(name)
    with session.connect(cluster, admin=True) as client:
        info = client.info()
        record = session.launched(name, launching.uid_for(model)) if keep else None
        if record and engine not in (None, record.get("engine")):
            record = None  # another engine: the old keys do not apply
        base = record.get("params") if record else None
        engine = engine or (record.get("engine") if record else None)
        return launching.plan(name, model, client, info, engine, overrides, replicas, n_gpu, base=base,
                              context=context)


def launch(p: ClusterPlan, on_progress: Callable[[LaunchState], None] | None = None,
           cancel: threading.Event | None = None, timeout: float = 600.0, replace: bool = False) -> RunningModel:
    """Launch a plan (``replace``: stop a model running under its uid first, as a fix's relaunch does)."""
    cluster = store.get(p.cluster)
    with session.connect(cluster, admin=True) as client:
        if replace:
            client.terminate(p.uid)
        running = launching.start(client, p, timeout, on_progress, cancel)
    session.remember(p.cluster, p.uid, p.engine, p.params, p.model.name if p.model is not None else None)
    return running


def stop(name: str, model: str) -> bool:
    """Stop a model on the cluster (by uid or Ember's name); False when none of that name runs."""
    cluster = store.get(name)
    found = find_running(name, model)
    uid = found.uid if found is not None else launching.uid_for(model)
    with session.connect(cluster, admin=True) as client:
        stopped = client.terminate(uid)
    session.forget(name, uid)
    return stopped


# -- routing -------------------------------------------------------------------------------------------

_failures: dict[str, tuple[float, str]] = {}


def last_error(name: str) -> str | None:
    failed = _failures.get(name)
    return failed[1] if failed else None


def endpoints(timeout: float = 3.0) -> list[Endpoint]:
    """One Endpoint per running model of each cluster, named ``CLUSTER/uid`` (a silent cluster is skipped
    for LIST_TTL seconds, so it does not slow every list down)."""
    out = []
    for cluster in store.list_clusters():
        failed = _failures.get(cluster.name)
        if failed and time.monotonic() - failed[0] < LIST_TTL:
            continue
        try:
            with session.connect(cluster, timeout=timeout) as client:
                running = client.running()
                key = client.inference_key
            _failures.pop(cluster.name, None)
        except (ClusterError, store.ClusterConfigError) as exc:
            log.info("cluster %s is not answering: %s", cluster.name, exc)
            _failures[cluster.name] = (time.monotonic(), str(exc))
            continue
        for m in running:
            out.append(Endpoint(f"{cluster.name}/{m.uid}", cluster.openai_url, key, "cluster", m.uid,
                                launching.EMBER_ENGINES.get(m.engine or "")))
    return out
