"""Cluster failures explained with the same kinds and fixes as local ones.

Xinference hides llama.cpp's context overflow behind a generic HTTP 500 ("The chat
completion request failed. Check the server logs for details."); the worker's real
words reach the model's events (``GET /v1/models/{uid}/events``). Those lines are read
with the engine's own dialect (:func:`engines.diagnosis.diagnose.diagnose_log`, the
:class:`ClusterPlan` standing in for a local plan), so the fixes are the engine's
(``n_ctx``, ``n_parallel``) and a fix relaunches on the cluster
(:meth:`ClusterPlan.with_changes`, :func:`engines.cluster.launching.relaunch`).
What only a cluster does (an API key that may not launch, a model not running
there, a worker gone, a launch the worker refused) gets its own words here.
"""
from __future__ import annotations

import logging
import time

from engines.chat.client import EngineHTTPError, StreamBroken
from engines.cluster.launching import ClusterPlan
from engines.cluster.store import ClusterConfigError
from engines.cluster.xinference import Client, ClusterError, Failure, ModelEvent, http_error
from engines.diagnosis import diagnose
from engines.diagnosis.types import Diagnosis, Fix, Kind

log = logging.getLogger(__name__)

#: Seconds before a request's start an event may carry its failure (the cluster's clock is whole seconds).
EVENT_SLACK = 2.0
#: Xinference's words when a request failed and the reason is only in its logs.
GENERIC_500 = "Check the server logs for details"


def _where(plan: ClusterPlan | None, cluster: str | None) -> str:
    return plan.cluster if plan is not None else (cluster or "the cluster")


def error_events(client: Client | None, uid: str | None, since: float | None = None,
                 settle: float = 0.5) -> list[ModelEvent]:
    """The model's ERROR/WARNING events since ``since`` (epoch seconds); waits ``settle`` once for a late one."""
    if client is None or not uid:
        return []
    for attempt in range(2):
        try:
            events = client.events(uid)
        except ClusterError as exc:
            log.info("no events for %s: %s", uid, exc)
            return []
        found = [e for e in events if e.type in ("ERROR", "WARNING")
                 and (since is None or e.time >= since - EVENT_SLACK)]
        if found or attempt or not settle:
            return found
        time.sleep(settle)
    return []


def diagnose_chat(exc: BaseException, plan: ClusterPlan | None, client: Client | None, since: float | None = None,
                  cluster: str | None = None) -> Diagnosis | None:
    """A chat request on a cluster failed: the model's events name the cause, read as the engine's log."""
    where = _where(plan, cluster)
    uid = plan.uid if plan is not None else None
    if isinstance(exc, EngineHTTPError):
        said = http_error(exc.status, exc.raw or exc.error_message, uid)
        if said.kind in (Failure.AUTH_REQUIRED, Failure.KEY_ONLY, Failure.FORBIDDEN, Failure.UNKNOWN_MODEL,
                         Failure.WORKER_LOST):
            return diagnose_cluster_error(said, plan, cluster)
        events = error_events(client, uid, since)
        lines = [e.text for e in events]
        d = diagnose.diagnose_log(lines, plan, phase="run") if lines else None
        if d is None and GENERIC_500 not in exc.error_message:
            d = diagnose.diagnose_exception(exc, plan=plan)  # the answer itself says what happened
        if d is None:
            d = Diagnosis(Kind.SERVER_ERROR, f"The model on {where} failed to answer",
                          f"Xinference said: {exc.error_message}\nIts events for the model name no cause Ember "
                          "knows; the worker's log on the cluster has the details.",
                          {"status": exc.status, "message": exc.error_message},
                          [Fix("Try again", {}, "", action="retry")])
        d.facts.update(cluster=where, uid=uid, source="events" if lines else "answer")
        d.log_tail = lines[-20:]
        return d
    if isinstance(exc, StreamBroken):
        if exc.connect:
            return diagnose_cluster_error(ClusterError(Failure.UNREACHABLE, exc.reason), plan, cluster)
        d = diagnose.diagnose_exception(exc, plan=plan)
        if d is not None:
            d.facts.update(cluster=where, uid=uid)
        return d
    if isinstance(exc, (ClusterError, ClusterConfigError)):
        return diagnose_cluster_error(exc, plan, cluster)
    return diagnose.diagnose_exception(exc, plan=plan)


def diagnose_cluster_error(exc: ClusterError | ClusterConfigError, plan: ClusterPlan | None = None,
                           cluster: str | None = None, client: Client | None = None) -> Diagnosis:
    """A refused or failed cluster call in words, with what to do."""
    where = _where(plan, cluster)
    if isinstance(exc, ClusterConfigError):
        return Diagnosis(Kind.AUTH_FAILED if exc.kind == "secret_missing" else Kind.BAD_PARAMETER,
                         f"The cluster {where} is not set up right", exc.problem, {"cluster": where},
                         [Fix("Edit the cluster", {}, "ember cluster add NAME URL ... replaces it", action="edit_cluster")])
    model = plan.uid if plan is not None else (exc.uid or "the model")
    facts = {"cluster": where, "status": exc.status, "detail": exc.detail, "failure": str(exc.kind)}
    if exc.kind is Failure.KEY_ONLY:
        return Diagnosis(Kind.AUTH_FAILED, f"An API key cannot launch or stop models on {where}",
                         exc.message if exc.message.startswith("Launching") else
                         f"The cluster said: {exc.detail}. Launching and stopping models needs an admin login; "
                         "an API key may only list models and chat.", facts,
                         [Fix("Add an admin login to the cluster", {},
                              "ember cluster add NAME URL --user NAME --password-env VARIABLE", action="edit_cluster")])
    if exc.kind in (Failure.AUTH_REQUIRED, Failure.FORBIDDEN):
        what = "login or API key" if exc.kind is Failure.AUTH_REQUIRED else "user"
        return Diagnosis(Kind.AUTH_FAILED, f"The cluster {where} refused the {what}",
                         f"The cluster said: {exc.detail or exc.message}\nCheck the user and password (or the API "
                         "key) Ember has for it.", facts,
                         [Fix("Edit the cluster's credentials", {}, "", action="edit_cluster")])
    if exc.kind is Failure.UNKNOWN_MODEL:
        return Diagnosis(Kind.MODEL_NOT_RUNNING, f"{model} is not running on {where}",
                         f"The cluster said: {exc.detail}", facts,
                         [Fix(f"Launch it on {where}", {}, f"ember cluster launch {where} MODEL",
                              action="launch_on_cluster")])
    if exc.kind is Failure.UNREACHABLE:
        return Diagnosis(Kind.UNREACHABLE, f"Cannot reach the cluster {where}",
                         f"{exc.message}\nCheck that its supervisor runs and that the address is right.", facts,
                         [Fix("Try again", {}, "", action="retry"), Fix("Edit the cluster", {}, "", action="edit_cluster")])
    if exc.kind is Failure.WORKER_LOST:
        return Diagnosis(Kind.CONNECTION_LOST, f"The cluster {where} lost the worker running {model}",
                         f"The cluster said: {exc.detail}\nThe worker stopped or left the cluster; launching the "
                         "model again puts it on a worker that is there.", facts,
                         [Fix(f"Launch it again on {where}", {}, "", action="relaunch")])
    if exc.kind in (Failure.LAUNCH_FAILED, Failure.TIMEOUT):
        return _launch_failed(exc, plan, where, client, facts)
    return Diagnosis(Kind.SERVER_ERROR, f"The cluster {where} failed", exc.message, facts,
                     [Fix("Try again", {}, "", action="retry")])


def _launch_failed(exc: ClusterError, plan: ClusterPlan | None, where: str, client: Client | None,
                   facts: dict) -> Diagnosis:
    """The worker could not load the model: its message (and the model's events) read as the engine's log."""
    lines = [exc.detail] if exc.detail else []
    lines += [e.text for e in error_events(client, exc.uid, settle=0.0)]
    d = diagnose.diagnose_log(lines, plan, phase="start") if lines and exc.kind is Failure.LAUNCH_FAILED else None
    model = plan.uid if plan is not None else (exc.uid or "the model")
    if d is None or d.kind in (Kind.STARTUP_FAILED, Kind.UNKNOWN):
        timed = exc.kind is Failure.TIMEOUT
        d = Diagnosis(Kind.STARTUP_FAILED, f"{model} could not start on {where}",
                      (exc.message if timed else f"The worker said: {exc.detail or 'nothing more'}") +
                      "\nThe cause is in the worker's log on the cluster (Xinference does not pass it on); "
                      "a context or GPU-layer setting the worker's memory cannot hold is the usual one.",
                      facts, (d.fixes if d is not None else []) or [Fix("Change the launch parameters", {}, "",
                                                                           action="edit_parameters")])
    d.facts.update(facts)
    d.log_tail = lines[-20:]
    return d
