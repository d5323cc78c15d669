"""Diagnoses of an engine that cannot run at all: a broken model file, a crash, a failed start,
a taken port, a refused parameter or API key."""
from __future__ import annotations

import signal

from engines.diagnosis.case import Case
from engines.diagnosis.evidence import best_match
from engines.diagnosis.types import Diagnosis, Fix, Kind

_INVALID_WORDS = {
    "missing": "The model file does not exist.",
    "empty": "The model file is empty (or is a folder): the download probably failed.",
    "not_gguf": "This file is not a GGUF model file (it does not start with 'GGUF').",
    "truncated": "The model file is incomplete: it ends before all its data (an interrupted download?).",
    "corrupt": "The model file is corrupted.",
    "unknown_architecture": "This version of llama.cpp does not know the model's architecture{arch}.",
    "unsupported": "This GGUF version is not supported by the installed llama.cpp.",
    "load_error": "llama.cpp could not load the model: {detail}",
}


def invalid_model(problem: str, facts: dict, path: str | None = None, detail: str | None = None) -> Diagnosis:
    arch = facts.get("architecture")
    text = _INVALID_WORDS.get(problem, _INVALID_WORDS["corrupt"]).format(
        arch=f" ('{arch}')" if arch else "", detail=detail or facts.get("detail", "unknown error"))
    if path:
        text += f"\nFile: {path}"
    fixes = []
    if problem in ("unknown_architecture", "unsupported"):
        fixes.append(Fix("Update the llama.cpp engine", {}, "pip install --upgrade xllamacpp", action="install"))
        fixes.append(Fix("Choose another model", {}, "Pick a model whose architecture this engine supports.",
                         action="choose_model"))
    else:
        again = Fix("Download the model again", {},
                    "Delete the file and download it again (from the models window or `ember pull`).",
                    action="redownload")
        other = Fix("Choose another file", {}, "Pick a complete .gguf model file.", action="choose_model")
        fixes += [other, again] if problem in ("not_gguf", "missing") else [again, other]
    facts = dict(facts, problem=problem)
    if path:
        facts["path"] = path
    return Diagnosis(Kind.INVALID_MODEL, "This is not a usable model file", text, facts, fixes)


def crashed(case: Case, status, lines: list[str], during: str) -> Diagnosis:
    facts: dict[str, object] = {}
    text = f"The engine stopped unexpectedly {during}"
    if status is not None:
        facts.update({"exit_code": status.code, "signal": status.signal})
        text = f"The engine {status.sentence} {during}"
        if status.signal:
            try:
                facts["signal_name"] = signal.Signals(status.signal).name
            except ValueError:
                pass
    text += "."
    killed = status is not None and status.signal == 9
    if killed:
        text += ("\nIf you did not stop it yourself, the system may have run out of memory "
                 "(the kernel's out-of-memory killer sends SIGKILL).")
    m = best_match(lines, getattr(case.plan, "engine", None), {"engine_crashed", "oom_load"})
    if m:
        text += f"\nLast error in the log: {m.line}"
        facts.update(m.facts)
    fixes = [Fix("Restart the engine", {}, "Relaunch with the same settings and send the message again.",
                 action="relaunch")]
    out_of_memory = killed or (m is not None and m.kind == Kind.OOM_LOAD)
    fixes += case.fixes(Kind.ENGINE_CRASHED, dict(facts, out_of_memory=out_of_memory))
    return Diagnosis(Kind.ENGINE_CRASHED, "The engine crashed", text, facts, fixes)


def startup_failed(status, line: str | None, timed_out: bool = False, reason: str | None = None) -> Diagnosis:
    facts: dict[str, object] = {}
    if status is not None:
        facts.update({"exit_code": status.code, "signal": status.signal})
    if timed_out:
        facts["timed_out"] = True
        text = reason or "The engine started but did not answer in time."
        fixes = [Fix("Try again", {}, "A large model on a slow disk can take minutes to load the first time.",
                     action="relaunch")]
    else:
        text = "The engine could not start" + (f" ({status.sentence})" if status is not None else "") + "."
        if line:
            text += f"\nThe log says: {line}"
        fixes = [Fix("Try again", {}, "", action="relaunch")]
    fixes.append(Fix("Show the engine log", {}, "The full log usually names the cause.", action="show_log"))
    return Diagnosis(Kind.STARTUP_FAILED, "The engine could not start", text, facts, fixes)


def module_missing(label: str, module: str | None, line: str, install_command: str) -> Diagnosis:
    """The engine's Python lacks a module it needs (the engine itself, or what runs it)."""
    what = f"module '{module}'" if module else "module it needs"
    return Diagnosis(Kind.ENGINE_MISSING, f"The {label} engine's Python lacks {module or 'a module'}",
                     f"The engine could not start: its Python has no {what}.\nThe log says: {line}",
                     {k: v for k, v in {"module": module, "install_command": install_command,
                                        "log_line": line}.items() if v},
                     [Fix(f"Install what {label} needs", {}, install_command, action="install"),
                      Fix("Show the engine log", {}, "The full log usually names the cause.", action="show_log")])


def auth(message: str | None, status: int | None = None) -> Diagnosis:
    return Diagnosis(Kind.AUTH_FAILED, "The server refused the API key",
                     "The server answered " + (f"HTTP {status}" if status else "that the key is wrong")
                     + (f": {message}" if message else "") + "\nCheck the API key of this endpoint.",
                     {k: v for k, v in {"status": status, "message": message}.items() if v is not None},
                     [Fix("Edit the endpoint's API key", {}, "", action="edit_endpoint")])


def port_in_use(facts: dict) -> Diagnosis:
    port = facts.get("port")
    return Diagnosis(Kind.PORT_IN_USE, "The engine's network port is already in use",
                     f"Another program is listening on {'port ' + str(port) if port else 'the port'} "
                     "(127.0.0.1), so the engine could not open its server.",
                     {k: int(v) if k == "port" else v for k, v in facts.items()},
                     [Fix("Try again on another port", {}, "Ember picks a free port on each launch.",
                          action="relaunch")])


def refused_parameter(case: Case, facts: dict, line: str) -> Diagnosis:
    """The engine's log says a parameter cannot work (its own fix, else: check the parameters)."""
    fixes = case.fixes(Kind.BAD_PARAMETER, facts) or [Fix("Check the parameters", {}, "", action="edit_parameters")]
    return Diagnosis(Kind.BAD_PARAMETER, "The engine refused a parameter", f"The engine said: {line}", facts, fixes)
