"""Guided errors: turn the evidence of a failure into a :class:`Diagnosis` with fixes.

Evidence is an exception (``EngineStartError``, ``EngineHTTPError``,
``StreamBroken``, ``PlanError``, ``ParamError``, ``ModelError``), the engine's
log lines (since launch, or since a request when the caller passes
``log_offset``), the child's exit status, and the launch plan. Structured
fields are trusted first (llama.cpp's ``exceed_context_size_error`` carries
``n_prompt_tokens`` and ``n_ctx``); log and message patterns second
(:mod:`engines.diagnosis.evidence`: the engine's own dialect, then the
engine-neutral tables).

Each diagnosis has a kind, a one-line title, an explanation with the numbers,
the numbers themselves (``facts``) and fixes. A fix is a concrete parameter
change in the engine's own keys (``{"n_ctx": 4096}`` for llama.cpp,
``{"max_model_len": 2048}`` for vLLM), computed by the engine
(:meth:`Engine.fixes_for`) and applied by ``LaunchPlan.with_changes`` and a
relaunch; or an action without changes (start a new conversation, pick another
file). The CLI prints :meth:`Diagnosis.render_text`, ``--json`` prints
:meth:`Diagnosis.to_dict`, the desktop shows the same fields in a dialog.

This module is the dispatch: which evidence means which kind. The words of
each kind are in :mod:`.context`, :mod:`.memory` and :mod:`.failures`.
Dependencies go one way: the diagnosis imports the engines
(:mod:`engines.running`); the engines import only :mod:`engines.diagnosis.types`.

:func:`diagnose_text` reads a whole log with no launch behind it (``ember
diagnose``): Ember's own engine log or one pasted from elsewhere. The engine is
the log's header's, else the one whose lines it holds; whether the failure came
while loading or while answering is read from the log itself.

Wherever a diagnosis shows an engine's words, the flags they name are said in
Ember's terms (``Engine.in_ember_terms``: "start it with `--embeddings`" becomes
``--set embedding=true --set pooling_type=mean``).
"""
from __future__ import annotations

import json
import logging

from engines import paths
from engines.chat import client
from engines.diagnosis import context, failures, memory
from engines.diagnosis.case import Case
from engines.diagnosis.evidence import (Match, best_match, classify_lines, guess_engine, owner, patterns_for,
                                        phase_of, proc_lines, read_log, supporting_facts, tail, wait_exit)
from engines.diagnosis.types import Diagnosis, Fix, Kind
from engines.models import store
from engines.running import launch, params, supervisor
from engines.running.backends import ENGINES, LABELS, availability

__all__ = ["Diagnosis", "Fix", "Kind", "Match", "best_match", "classify_lines", "diagnose", "diagnose_exception",
           "diagnose_finish", "diagnose_log", "diagnose_text", "guess_engine", "patterns_for", "preflight"]

log = logging.getLogger(__name__)

preflight = memory.preflight


def diagnose_log(lines: list[str], plan=None, phase: str = "start", status=None, path: str | None = None,
                 model_path: str | None = None) -> Diagnosis | None:
    """Diagnose from log lines alone (``phase`` "start" or "run"); None if nothing is recognised."""
    case = Case.of(plan)
    return _in_ember_terms(_from_log(lines, case, phase, status, path, model_path), case)


def diagnose_text(text: str, engine: str | None = None, path: str | None = None) -> Diagnosis | None:
    """The diagnosis of a whole engine log with no launch behind it; None when it shows no known failure.

    Ember's own log is read from its last ``# ember launch`` header on, whose engine it takes; a log from
    elsewhere is read with ``engine``'s dialect, else that of the engine whose lines it holds, else with
    every engine's. Whether it failed while loading or while answering comes from the log (``facts["phase"]``:
    "start", "run" or "unknown"); the fixes come from the log's own numbers."""
    lines = text.splitlines()
    header = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("# ember launch"):
            header, lines = _header_engine(lines[i]), lines[i + 1:]
            break
    name = engine or header or guess_engine(lines)
    matches = classify_lines(lines, name)
    if not matches:
        return None
    best = min(matches, key=lambda m: m.rank)
    name = name or owner(best)  # a line only one engine writes names its engine
    phase = phase_of(lines, best, name)
    case = Case.for_engine(name)
    d = _from_log(lines, case, phase, None, path, None)
    if d is None:
        return None
    d.facts.setdefault("engine", name or "unknown")
    d.facts.setdefault("phase", phase or "unknown")
    return _in_ember_terms(d, case)


def _header_engine(line: str) -> str | None:
    """The engine an ``# ember launch <time> {json}`` header names."""
    try:
        return json.loads(line.split(" ", 4)[4]).get("engine")
    except (IndexError, ValueError, AttributeError):
        return None


def _in_ember_terms(d: Diagnosis | None, case: Case) -> Diagnosis | None:
    """The engine's words in ``d`` with the flags they name said Ember's way (a remote server's stay its own)."""
    if d is None or case.engine is None:
        return d
    tokens = _int(d.facts.get("suggested_n_ctx"))
    d.explanation = case.engine.in_ember_terms(d.explanation, tokens)
    for key in ("message", "log_line"):
        if isinstance(d.facts.get(key), str):
            d.facts[key] = case.engine.in_ember_terms(d.facts[key], tokens)
    return d


def diagnose_exception(exc: BaseException, proc=None, plan=None, log_offset: int = 0) -> Diagnosis | None:
    """The diagnosis for any failure Ember meets; None only when there is nothing useful to say.

    ``log_offset``: the engine log's size when the failed request began (``proc.log_size()``), so only
    the lines of that request are read."""
    case = Case.of(plan)
    try:
        if isinstance(exc, supervisor.EngineStartError):
            return _in_ember_terms(_from_start_error(exc, case), case)
        if isinstance(exc, client.EngineHTTPError):
            return _in_ember_terms(_from_http(exc, proc, case, log_offset), case)
        if isinstance(exc, supervisor.EngineExited):  # a ready engine died (its watcher saw it)
            d = failures.crashed(case, exc.status, list(exc.log_tail), "")
            d.log_path, d.log_tail = str(exc.log_path), tail(list(exc.log_tail))
            return d
        if isinstance(exc, client.EngineStalled):
            d = failures.stalled(exc.seconds, exc.paused, exc.timeout)
            if proc is not None:
                d.log_path, d.log_tail = str(proc.log_path), tail(proc.log_lines(log_offset))
            return d
        if isinstance(exc, client.StreamBroken):
            return _in_ember_terms(_from_broken(exc, proc, case, log_offset), case)
        if isinstance(exc, launch.PlanError):
            return _from_plan_error(exc)
        if isinstance(exc, params.ParamError):
            return _from_param_error(exc)
        if isinstance(exc, store.ModelError):
            return _from_model_error(exc)
        if isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, FileNotFoundError) \
                and not paths.is_no_space(exc):  # a full disk says so itself (paths.NoSpace.message)
            return Diagnosis(Kind.UNREACHABLE, "Cannot reach the server", str(exc), {},
                             [Fix("Try again", {}, "", action="retry")])
    except Exception:  # a diagnosis must never hide the original error
        log.exception("diagnosis failed for %r", exc)
        return None
    return None


#: the name ARCHITECTURE.md uses for the entry point
diagnose = diagnose_exception


def diagnose_finish(finished, plan) -> Diagnosis | None:
    """A reply cut short because the slot's context ran out (finish_reason "length" before max_tokens)."""
    return context.reply_cut_short(finished, Case.of(plan))


# -- log lines -------------------------------------------------------------------------------------

def _phase_kind(best: Match, matches: list[Match], phase: str) -> tuple[Kind, dict]:
    """The kind the best line names, as the phase reads it, with the facts of every memory line."""
    kind, facts = best.kind, dict(best.facts, log_line=best.line)
    memory_lines = [m for m in matches if m.kind == Kind.OOM_LOAD]
    if phase == "start" and kind in (Kind.KV_CACHE_FULL, Kind.IMAGE_FAILED, Kind.CONTEXT_EXCEEDED):
        kind = Kind.OOM_LOAD  # the warm-up decode failed: memory ran out while loading
    if phase == "run" and kind == Kind.OOM_LOAD:
        kind = Kind.KV_CACHE_FULL
        facts["cause"] = "memory"
    if phase == "run" and kind == Kind.STARTUP_FAILED:
        kind = Kind.ENGINE_CRASHED  # it had started: a failure while answering is a crash
    if kind == Kind.KV_CACHE_FULL and memory_lines:
        facts["cause"] = "memory"
    if kind == Kind.OOM_LOAD:
        for m in memory_lines:  # numbers may sit on another line than the best one
            for k, v in m.facts.items():
                facts.setdefault(k, v)
        if any("kv cache" in m.line.lower() for m in memory_lines):
            facts["kv"] = True
    return Kind(kind), facts


_DURING = {"start": "while starting", "run": "while answering"}


def _from_log(lines: list[str], case: Case, phase: str | None = "start", status=None, path: str | None = None,
              model_path: str | None = None) -> Diagnosis | None:
    """``phase``: "start", "run", or None when the log cannot tell (then the kind is as the line names it)."""
    engine = getattr(case.plan, "engine", None) or (case.engine.name if case.engine is not None else None)
    matches = classify_lines(lines, engine)
    if not matches:
        return None
    best = min(matches, key=lambda m: m.rank)
    kind, facts = _phase_kind(best, matches, phase)
    for k, v in supporting_facts(lines, best, engine).items():
        facts.setdefault(k, v)
    if kind == Kind.OOM_LOAD:
        d = memory.oom_load(case, facts)
    elif kind == Kind.INVALID_MODEL:
        d = failures.invalid_model(str(facts.get("problem", "corrupt")),
                                   {k: v for k, v in facts.items() if k != "problem"},
                                   model_path or getattr(getattr(case.plan, "model", None), "path", None),
                                   case=case)
    elif kind == Kind.PORT_IN_USE:
        d = failures.port_in_use(facts)
    elif kind in (Kind.KV_CACHE_FULL, Kind.IMAGE_FAILED):
        d = (context.kv_cache_full(case, facts.get("cause"), None) if kind == Kind.KV_CACHE_FULL
             else memory.image_failed(case, None, facts.get("cause")))
        d.facts["log_line"] = best.line
        if facts.get("pool"):
            d.facts["pool"] = facts["pool"]
    elif kind == Kind.CONTEXT_EXCEEDED:
        d = context.context_exceeded(case, _int(facts.get("n_prompt_tokens")), _int(facts.get("n_ctx_slot")),
                                     reply_tokens=_int(facts.get("max_tokens")), limit=facts.get("limit"))
        d.facts["log_line"] = best.line
    elif kind == Kind.GPU_UNUSABLE:
        d = failures.gpu_unusable(case, facts, best.line)
    elif kind == Kind.NOT_SUPPORTED:
        d = failures.feature_off(case, {k: v for k, v in facts.items() if k != "log_line"}, best.line)
    elif kind == Kind.ENGINE_CRASHED:
        d = failures.crashed(case, status, lines, _DURING.get(phase or "", ""))
    elif kind == Kind.BAD_PARAMETER:
        d = failures.refused_parameter(case, facts, best.line)
    elif kind == Kind.AUTH_FAILED:
        d = failures.auth(None)
    elif kind == Kind.STARTUP_FAILED and facts.get("problem") == "engine_missing" and case.engine is not None:
        d = failures.module_missing(case.engine.label, facts.get("module"), best.line,
                                    availability(case.engine.name).install_command)
    elif kind == Kind.STARTUP_FAILED:
        d = failures.startup_failed(status, best.line)
    else:
        return None
    d.log_path = str(path) if path else None
    d.log_tail = tail(lines)
    return d


def _int(v) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


# -- exceptions ------------------------------------------------------------------------------------

def _from_start_error(exc: supervisor.EngineStartError, case: Case) -> Diagnosis:
    lines = read_log(exc.log_path) or list(exc.log_tail)
    model_path = getattr(getattr(case.plan, "model", None), "path", None)
    status = exc.status
    d = None
    if not exc.timed_out:
        d = _from_log(lines, case, "start", status, exc.log_path, model_path)
        if status is not None and status.signal and (d is None or d.kind == Kind.STARTUP_FAILED):
            d = failures.crashed(case, status, lines, "while starting")
    if d is None:
        d = failures.startup_failed(status, None, exc.timed_out, exc.reason if exc.timed_out else None)
    d.log_path = str(exc.log_path)
    d.log_tail = tail(lines)
    if status is not None:
        d.facts.setdefault("exit_code", status.code)
        d.facts.setdefault("signal", status.signal)
    return d


def _from_message(exc: client.EngineHTTPError, m: Match | None, proc, case: Case, offset: int,
                  lines: list[str]) -> Diagnosis:
    """An error answer without structured fields: its message names the kind (``m``), else the log does."""
    message = exc.error_message
    if m is not None and m.kind == Kind.CONTEXT_EXCEEDED:
        return context.context_exceeded(case, _int(m.facts.get("n_prompt_tokens")), _int(m.facts.get("n_ctx_slot")),
                                        message, history=(exc.turns or 1) > 1)
    if m is not None and m.kind == Kind.KV_CACHE_FULL:
        cause = m.facts.get("cause")
        lines = lines or proc_lines(proc, offset, settle=0.0)
        if any(x.kind == Kind.OOM_LOAD for x in classify_lines(lines, getattr(case.plan, "engine", None))):
            cause = "memory"
        return context.kv_cache_full(case, cause, message)
    if m is not None and m.kind == Kind.IMAGE_FAILED:
        return memory.image_failed(case, message, m.facts.get("cause"))
    if m is not None and m.kind == Kind.AUTH_FAILED:
        return failures.auth(message, exc.status)
    if m is not None and m.kind == Kind.NOT_SUPPORTED:
        return failures.feature_off(case, m.facts, message)
    d = _from_log(lines, case, "run") if lines else None
    return d or Diagnosis(Kind.SERVER_ERROR, f"The engine answered with an error (HTTP {exc.status})",
                          f"The engine said: {message}", {"status": exc.status, "type": exc.type,
                                                          "message": message},
                          [Fix("Try again", {}, "", action="retry")])


def _from_http(exc: client.EngineHTTPError, proc, case: Case, offset: int) -> Diagnosis:
    f = exc.fields
    lines = proc_lines(proc, offset, settle=0.0)
    if exc.type == "exceed_context_size_error" or ("n_prompt_tokens" in f and "n_ctx" in f):
        d = context.context_exceeded(case, _int(f.get("n_prompt_tokens")), _int(f.get("n_ctx")), exc.error_message,
                                     history=(exc.turns or 1) > 1)
    elif exc.status in (401, 403):
        d = failures.auth(exc.error_message, exc.status)
    else:
        m = best_match([exc.error_message], getattr(case.plan, "engine", None))
        if m is None and proc is not None:
            lines = proc_lines(proc, offset)  # the log may name what the message does not, once flushed
        d = _from_message(exc, m, proc, case, offset, lines)
    d.facts.setdefault("status", exc.status)
    if exc.type:
        d.facts.setdefault("type", exc.type)
    d.facts["mid_stream"] = bool(exc.mid_stream)
    if proc is not None:
        d.log_path = str(proc.log_path)
        d.log_tail = tail(lines or proc.log_lines(offset))
    return d


def _from_broken(exc: client.StreamBroken, proc, case: Case, offset: int) -> Diagnosis:
    status = wait_exit(proc) if proc is not None else None
    if status is not None:
        lines = proc.log_lines(offset) if offset else read_log(proc.log_path)
        d = failures.crashed(case, status, lines, "while answering")
        d.log_path, d.log_tail = str(proc.log_path), tail(lines)
        d.facts.setdefault("exit_code", status.code)
        d.facts.setdefault("signal", status.signal)
        if exc.received_text:
            d.facts["received_chars"] = len(exc.received_text)
        return d
    if exc.connect:
        return Diagnosis(Kind.UNREACHABLE, "Cannot reach the server",
                         f"Ember could not connect: {exc.reason}\nCheck that the server is running and that the "
                         "address is right.", {"reason": exc.reason},
                         [Fix("Try again", {}, "", action="retry"),
                          Fix("Edit the endpoint", {}, "", action="edit_endpoint")])
    d = Diagnosis(Kind.CONNECTION_LOST, "The connection to the engine broke",
                  f"The answer stopped before it was complete: {exc.reason}",
                  {"reason": exc.reason, "received_chars": len(exc.received_text)},
                  [Fix("Try again", {}, "", action="retry")])
    if proc is not None:
        d.log_path, d.log_tail = str(proc.log_path), tail(proc.log_lines(offset))
    return d


def _from_plan_error(exc: launch.PlanError) -> Diagnosis:
    reasons = {LABELS.get(e, e): r for e, r in (exc.reasons or {}).items()}
    if exc.engine and exc.install_command:
        label = LABELS.get(exc.engine, exc.engine)
        return Diagnosis(Kind.ENGINE_MISSING, f"The {label} engine is not installed",
                         f"{exc.model} needs the {label} engine, which is not installed here.",
                         {"model": exc.model, "engine": exc.engine, "install_command": exc.install_command,
                          "reasons": reasons},
                         [Fix(f"Install {label}", {}, exc.install_command, action="install")])
    why = "\n".join(f"- {e}: {r}" for e, r in reasons.items())
    able = [e for e in ENGINES if e not in (exc.reasons or {})]
    if able:  # the engine asked for cannot, another can
        return Diagnosis(Kind.NOT_SUPPORTED, f"The chosen engine cannot run {exc.model}",
                         f"Why:\n{why}\n{LABELS.get(able[0], able[0])} can run it.",
                         {"model": exc.model, "reasons": reasons, "engines_able": able},
                         [Fix(f"Use {LABELS.get(e, e)} instead", {}, "", action=f"use_engine:{e}") for e in able])
    return Diagnosis(Kind.NOT_SUPPORTED, f"No engine can run {exc.model} on this computer",
                     f"Why each engine cannot run it:\n{why}" if why else exc.message,
                     {"model": exc.model, "reasons": reasons},
                     [Fix("Choose another model", {}, "The models window shows what fits this computer.",
                          action="choose_model")])


def _from_param_error(exc: params.ParamError) -> Diagnosis:
    """A parameter refused before launch: the nearest valid value first, then the keys meant."""
    fixes = [Fix(f"Use {s}", {}, f"Did you mean {s}?", action="edit_parameters") for s in exc.suggestions]
    if exc.nearest is not None:
        fixes.insert(0, Fix(f"Use {exc.key} = {exc.nearest}", {exc.key: exc.nearest}, "The nearest valid value."))
    fixes = fixes or [Fix("Change the parameter", {}, "", action="edit_parameters")]
    return Diagnosis(Kind.BAD_PARAMETER, f"The parameter {exc.key or ''} cannot be used".replace("  ", " "),
                     exc.message, {"key": exc.key, "value": _jsonable(exc.value),
                                   "suggestions": list(exc.suggestions)}, fixes)


def _from_model_error(exc: store.ModelError) -> Diagnosis:
    if exc.kind == "not_downloaded":
        return Diagnosis(Kind.MODEL_NOT_DOWNLOADED, f"{exc.name} is not downloaded yet",
                         f"{exc.name} {exc.problem}", {"model": exc.name},
                         [Fix("Download it", {}, f"ember pull {exc.name}", action="download")])
    problem = {"not_model": "not_gguf", "invalid": "corrupt"}.get(exc.kind, exc.kind)
    d = failures.invalid_model(problem, {"model": exc.name})
    d.explanation = f"{exc.name}: {exc.problem}"
    return d


def _jsonable(v):
    return v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)
