"""A typed client for Xinference's REST API (4.x): what Ember asks a cluster, and the answers as dataclasses.

Xinference speaks two kinds of credentials: an admin's login (``POST /token`` → a
JWT) may do everything; an API key (``xf-...``) may only list and infer (launch,
terminate and register answer 403 "API keys can only access model query and
inference endpoints"). Every failure is a :class:`ClusterError` with a ``kind`` the
diagnosis reads, the HTTP status and the server's own words.

Known traps (Xinference 4.1.0): ``GET /v1/model_registrations/LLM`` never answers in
supervisor + worker mode (this client never calls it; ``/v1/models/families`` lists
the built-in names instead), and ``POST /v1/models`` blocks until the model is loaded
unless ``wait_ready=false`` (used here, so the wait can report progress).
"""
from __future__ import annotations

import enum
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx

log = logging.getLogger(__name__)

#: Xinference's words for a model's launch state (``/v1/models/instances``).
READY, ERROR = "READY", "ERROR"
#: "[address=127.0.0.1:43797, pid=1550] " before every message a worker relays
ACTOR_PREFIX = re.compile(r"^\s*\[address=[^\]]*\]\s*")


class Failure(str, enum.Enum):
    """What went wrong talking to a cluster, for the diagnosis and the words."""

    UNREACHABLE = "unreachable"      # no answer at the URL
    AUTH_REQUIRED = "auth_required"  # 401: no or wrong credentials
    KEY_ONLY = "key_only"            # 403: an API key tried an admin action
    FORBIDDEN = "forbidden"          # 403 for another reason (the user lacks the permission)
    UNKNOWN_MODEL = "unknown_model"  # no running model / registration of that name
    LAUNCH_FAILED = "launch_failed"  # the worker could not load it
    WORKER_LOST = "worker_lost"      # the worker that held the model is gone
    BAD_REQUEST = "bad_request"      # 400 / 422 for anything else
    SERVER_ERROR = "server_error"    # 5xx
    TIMEOUT = "timeout"              # it did not get ready in time
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class ClusterError(RuntimeError):
    """A cluster refused or failed a call: ``kind`` says which way, ``detail`` is the server's text."""

    def __init__(self, kind: Failure, message: str, status: int | None = None, detail: str = "",
                 uid: str | None = None):
        self.kind, self.status, self.detail, self.uid = Failure(kind), status, detail, uid
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Device:
    """One worker's accelerators as Xinference reports them (count and memory; no names)."""

    gpu_count: int
    vram_total_bytes: int
    vram_free_bytes: int


@dataclass(frozen=True)
class Worker:
    address: str
    cpu_count: int | None
    memory_total_bytes: int | None
    memory_free_bytes: int | None
    gpus: Device | None = None
    version: str | None = None


@dataclass
class ClusterInfo:
    """What a cluster is: its version and workers (None where the credentials may not ask)."""

    url: str
    auth: bool
    version: str | None = None
    workers: list[Worker] | None = None  # None: not told (an API key may not read the cluster's devices)

    @property
    def devices_known(self) -> bool:
        return self.workers is not None


@dataclass(frozen=True)
class RunningModel:
    uid: str
    model_name: str
    engine: str | None           # Xinference's engine name ("llama.cpp", "vLLM"...)
    context_length: int | None
    replicas: int = 1
    address: str | None = None   # the worker's model actor
    ability: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchState:
    """A launch under way: Xinference's status, its progress (0..1) and what it says it does."""

    uid: str
    status: str                  # CREATING, READY, ERROR, or GONE when the cluster no longer lists it
    progress: float | None = None
    stage: str = ""
    error: str | None = None


@dataclass(frozen=True)
class ModelEvent:
    """One line of ``GET /v1/models/{uid}/events``: where a worker's errors for the model end up."""

    time: float
    type: str                    # INFO, WARNING, ERROR
    text: str


@dataclass
class Launch:
    """The launch body: Xinference's fields, and the engine's own options passed through as they are."""

    uid: str
    model_name: str
    engine: str                  # Xinference's name ("llama.cpp")
    options: dict[str, object] = field(default_factory=dict)  # n_ctx, n_parallel, max_model_len...
    replicas: int = 1
    n_gpu: int | str | None = "auto"

    def body(self) -> dict:
        body = {"model_uid": self.uid, "model_name": self.model_name, "model_engine": self.engine,
                "model_type": "LLM", "replica": self.replicas}
        if self.n_gpu is not None:
            body["n_gpu"] = self.n_gpu
        body.update(self.options)
        return body


def strip_actor(text: str) -> str:
    """The message without the worker's "[address=..., pid=...]" prefix."""
    return ACTOR_PREFIX.sub("", text or "").strip()


class Client:
    """One cluster at ``url`` (its root, not /v1). ``token``: an admin JWT; ``api_key``: an ``xf-`` key.

    Inference and listing use whichever is given (the key first); admin calls need the token."""

    def __init__(self, url: str, token: str | None = None, api_key: str | None = None, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.token, self.api_key = token, api_key
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=5.0),
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def inference_key(self) -> str | None:
        """What an OpenAI client sends as its key to this cluster."""
        return self.api_key or self.token

    # -- plumbing ------------------------------------------------------------------------------
    def _headers(self, admin: bool) -> dict[str, str]:
        secret = self.token if admin else (self.api_key or self.token)
        if admin and secret is None:
            secret = self.api_key  # let the cluster say what a key may not do (or that auth is off)
        return {"Authorization": f"Bearer {secret}"} if secret else {}

    def _call(self, method: str, path: str, admin: bool = False, uid: str | None = None,
              timeout: float | None = None, **kw) -> object:
        try:
            r = self._http.request(method, path, headers=self._headers(admin),
                                   **({"timeout": timeout} if timeout else {}), **kw)
        except httpx.TimeoutException as exc:
            raise ClusterError(Failure.UNREACHABLE, f"the cluster at {self.url} did not answer in time ({exc})",
                               detail=str(exc)) from exc
        except httpx.TransportError as exc:
            raise ClusterError(Failure.UNREACHABLE, f"cannot reach the cluster at {self.url}: {exc}",
                               detail=str(exc)) from exc
        if r.status_code >= 400:
            raise http_error(r.status_code, r.text, uid)
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            return r.text

    # -- what the cluster is -------------------------------------------------------------------
    def auth_enabled(self) -> bool:
        data = self._call("GET", "/v1/cluster/auth")
        return bool(data.get("auth")) if isinstance(data, dict) else True

    def login(self, user: str, password: str) -> str:
        """An admin's login → the token for launch and terminate (kept on this client)."""
        data = self._call("POST", "/token", json={"username": user, "password": password})
        token = data.get("access_token") if isinstance(data, dict) else None
        if not token:
            raise ClusterError(Failure.AUTH_REQUIRED, "the cluster gave no token for that login", detail=str(data))
        self.token = token
        return token

    def info(self) -> ClusterInfo:
        """Version and workers where the credentials may read them (an API key may not: those stay None)."""
        auth = self.auth_enabled()
        out = ClusterInfo(self.url, auth)
        if auth and not self.token:
            self._call("GET", "/v1/models")  # the key works at all (or a 401 says it does not)
            return out
        version = self._call("GET", "/v1/cluster/version", admin=True)
        out.version = version.get("version") if isinstance(version, dict) else None
        nodes = self._call("GET", "/v1/cluster/info", admin=True, params={"detailed": "true"})
        out.workers = [_worker(n) for n in nodes or [] if isinstance(n, dict) and n.get("node_type") == "Worker"]
        return out

    # -- models ---------------------------------------------------------------------------------
    def running(self) -> list[RunningModel]:
        data = self._call("GET", "/v1/models")
        out = []
        for m in (data or {}).get("data", []) if isinstance(data, dict) else []:
            out.append(RunningModel(m.get("id"), m.get("model_name") or m.get("id"), m.get("model_engine"),
                                    _int(m.get("context_length")), _int(m.get("replica")) or 1, m.get("address"),
                                    tuple(m.get("model_ability") or ())))
        return out

    def builtin_names(self) -> list[str]:
        """Xinference's built-in chat model names (from the families list: the registrations list hangs)."""
        data = self._call("GET", "/v1/models/families")
        names = data.get("chat", []) if isinstance(data, dict) else []
        return sorted(set(names), key=str.lower)

    def engines_for(self, model_name: str) -> dict[str, list[dict]]:
        """Which Xinference engines can run a model, each with its formats and quantizations."""
        data = self._call("GET", f"/v1/engines/{model_name}", uid=model_name)
        return data if isinstance(data, dict) else {}

    def registration(self, model_name: str) -> dict | None:
        """A registered model's spec; None when the cluster has none of that name."""
        try:
            data = self._call("GET", f"/v1/model_registrations/LLM/{model_name}", uid=model_name)
        except ClusterError as exc:
            if exc.kind is Failure.UNKNOWN_MODEL:
                return None
            raise
        return data if isinstance(data, dict) else None

    def register(self, spec: dict, persist: bool = True) -> None:
        """Register a custom LLM (``spec``: Xinference's version-2 model spec)."""
        self._call("POST", "/v1/model_registrations/LLM", admin=True, uid=spec.get("model_name"),
                   json={"model": json.dumps(spec), "persist": persist})

    def launch(self, launch: Launch) -> str:
        """Start loading; returns at once (``wait_ready=false``): :meth:`wait` follows it."""
        data = self._call("POST", "/v1/models", admin=True, uid=launch.model_name, params={"wait_ready": "false"},
                          json=launch.body(), timeout=60.0)
        return (data or {}).get("model_uid", launch.uid) if isinstance(data, dict) else launch.uid

    def state(self, uid: str) -> LaunchState:
        data = self._call("GET", "/v1/models/instances", params={"model_uid": uid}, uid=uid)
        if not data:
            return LaunchState(uid, "GONE")
        inst = data[0]
        replicas = inst.get("replica_statuses") or []
        errors = [strip_actor(r.get("error_message")) for r in replicas if r.get("error_message")]
        statuses = [r.get("status") for r in replicas] or [inst.get("status")]
        status = ERROR if ERROR in statuses else inst.get("status") or "CREATING"
        progress, stage = None, ""
        if status not in (READY, ERROR):
            try:
                p = self._call("GET", f"/v1/models/{uid}/progress", uid=uid)
                progress, stage = _float(p.get("progress")), str(p.get("info") or p.get("stage") or "")
                stage = str((p.get("replicas") or [{}])[0].get("info") or stage) if p.get("replicas") else stage
            except ClusterError as exc:
                log.info("no progress for %s: %s", uid, exc)
        return LaunchState(uid, status, 1.0 if status == READY else progress, stage, errors[0] if errors else None)

    def wait(self, uid: str, timeout: float = 600.0, on_progress: Callable[[LaunchState], None] | None = None,
             cancel: threading.Event | None = None, poll: float = 0.5) -> LaunchState:
        """Until the model is ready; ClusterError(LAUNCH_FAILED) with the worker's message when it fails."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(uid)
            if on_progress is not None:
                on_progress(st)
            if st.status == READY:
                return st
            if st.status in (ERROR, "GONE"):
                error = st.error or self._wait_error(uid)
                raise ClusterError(Failure.LAUNCH_FAILED, f"the cluster could not load {uid}: "
                                   f"{error or 'it says no more'}", detail=error or "", uid=uid)
            if cancel is not None and cancel.is_set():
                raise ClusterError(Failure.CANCELLED, f"the launch of {uid} was cancelled", uid=uid)
            if time.monotonic() > deadline:
                raise ClusterError(Failure.TIMEOUT, f"{uid} was not ready after {timeout:.0f} s "
                                   f"({st.stage or st.status})", uid=uid)
            time.sleep(poll)

    def _wait_error(self, uid: str) -> str | None:
        """The error a failed replica reports a moment after it is marked ERROR."""
        for _ in range(10):
            time.sleep(0.3)
            st = self.state(uid)
            if st.error:
                return st.error
        return None

    def terminate(self, uid: str) -> bool:
        """Stop a model; False when the cluster had no such model running."""
        try:
            self._call("DELETE", f"/v1/models/{uid}", admin=True, uid=uid, timeout=60.0)
        except ClusterError as exc:
            if exc.kind is Failure.UNKNOWN_MODEL:
                return False
            raise
        return True

    def events(self, uid: str) -> list[ModelEvent]:
        """The model's events: a worker's errors for it (llama.cpp's real message behind a generic 500)."""
        data = self._call("GET", f"/v1/models/{uid}/events", uid=uid)
        return [ModelEvent(float(e.get("event_ts") or 0), str(e.get("event_type") or ""),
                           strip_actor(str(e.get("event_content") or "")))
                for e in data or [] if isinstance(e, dict)]


# -- answers ---------------------------------------------------------------------------------------

_NOT_FOUND = re.compile(r"not found|no such model|does not exist", re.IGNORECASE)
_WORKER_LOST = re.compile(r"Remote server [^\s]+ closed|ServerClosed|worker .*(?:dead|lost|not alive|is gone)|"
                          r"No available (?:worker|slot)|ActorNotExist|Connection refused", re.IGNORECASE)
KEY_ONLY_TEXT = "API keys can only access model query and inference endpoints"


def http_error(status: int, text: str, uid: str | None = None) -> ClusterError:
    """The :class:`ClusterError` for an error answer (Xinference puts its words in ``detail``)."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, (list, dict)):
        detail = json.dumps(detail)
    detail = strip_actor(str(detail if detail is not None else text)).strip()
    if status == 401:
        return ClusterError(Failure.AUTH_REQUIRED, f"the cluster refused the credentials: {detail}", status, detail,
                            uid)
    if status == 403:
        kind = Failure.KEY_ONLY if KEY_ONLY_TEXT.lower() in detail.lower() else Failure.FORBIDDEN
        return ClusterError(kind, f"the cluster refused: {detail}", status, detail, uid)
    if _WORKER_LOST.search(detail):
        return ClusterError(Failure.WORKER_LOST, f"the cluster lost a worker: {detail}", status, detail, uid)
    if status in (400, 404) and _NOT_FOUND.search(detail):
        return ClusterError(Failure.UNKNOWN_MODEL, detail, status, detail, uid)
    if status >= 500:
        return ClusterError(Failure.SERVER_ERROR, f"the cluster failed (HTTP {status}): {detail}", status, detail,
                            uid)
    return ClusterError(Failure.BAD_REQUEST, f"the cluster refused the request (HTTP {status}): {detail}", status,
                        detail, uid)


def _worker(node: dict) -> Worker:
    gpus = _int(node.get("gpu_count")) or 0
    device = Device(gpus, _int(node.get("gpu_vram_total")) or 0, _int(node.get("gpu_vram_available")) or 0) \
        if gpus else None
    return Worker(str(node.get("ip_address") or ""), _int(node.get("cpu_count")), _int(node.get("mem_total")),
                  _int(node.get("mem_available")), device, node.get("software_version"))


def _int(v) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _float(v) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None
