"""Diagnoses of an engine that cannot run at all: a broken model file, a crash, a failed start,
a taken port, a refused parameter or API key, a GPU the engine cannot use, a feature switched off."""
from __future__ import annotations

import re
import signal

import psutil

from engines import units
from engines.diagnosis.case import Case
from engines.diagnosis.evidence import best_match
from engines.diagnosis.types import Diagnosis, Fix, Kind
from engines.running.backends.installed import install_command

_INVALID_WORDS = {
    "missing": "The model file does not exist.",
    "empty": "The model file is empty (or is a folder): the download probably failed.",
    "not_gguf": "This file is not a GGUF model file (it does not start with 'GGUF').",
    "truncated": "The model file is incomplete: it ends before all its data (an interrupted download?).",
    "corrupt": "The model file is corrupted.",
    "unknown_architecture": "This version of {engine} does not know the model's architecture{arch}.",
    "unsupported": "This model file's format is newer than the installed {engine} can read.",
    "wrong_tensors": "The model file does not hold the tensors {engine} expects for its architecture{tensor}: it was "
                     "converted for another version of {engine}, or the conversion or download is incomplete.",
    "wrong_weights": "The model's weights do not match the model {engine} builds for it: they were converted for "
                     "another version of {engine}, or belong to another model.",
    "load_error": "{engine} could not load the model: {detail}",
}
#: a GGUF's first bytes when the file is a Git LFS pointer ("version https://git-lfs..."), not the model
_LFS_MAGIC = ("vers", "76657273", "73726576")


def invalid_model(problem: str, facts: dict, path: str | None = None, detail: str | None = None,
                  case: Case | None = None) -> Diagnosis:
    label = case.label if case is not None and case.engine is not None else "llama.cpp"
    arch, tensor = facts.get("architecture"), facts.get("tensor") or facts.get("missing")
    text = _INVALID_WORDS.get(problem, _INVALID_WORDS["corrupt"]).format(
        engine=label, arch=f" ('{arch}')" if arch else "", tensor=f" ('{tensor}' is missing)" if tensor else "",
        detail=detail or facts.get("detail", "unknown error"))
    if problem == "not_gguf" and str(facts.get("magic", "")).lower() in _LFS_MAGIC:
        text += ("\nIt is a Git LFS pointer (a small text file that stands for the model): the model itself was "
                 "never downloaded.")
    if path:
        text += f"\nFile: {path}"
    fixes = []
    if problem in ("unknown_architecture", "unsupported", "wrong_tensors", "wrong_weights"):
        name = case.engine.name if case is not None and case.engine is not None else "llamacpp"
        upgrade = install_command(name).replace("pip install", "pip install --upgrade", 1)
        fixes.append(Fix(f"Update the {label} engine", {}, upgrade, action="install"))
        fixes.append(Fix("Choose another model", {}, "Pick a model whose architecture this engine supports.",
                         action="choose_model"))
        if problem in ("wrong_tensors", "wrong_weights"):
            fixes.append(Fix("Download the model again", {}, "From a source made for this engine's version.",
                             action="redownload"))
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


#: Ember's worker says which signal stopped it (it exits 0 after SIGTERM, so the status cannot tell).
_WORKER_SIGNAL = re.compile(r"ember-worker: received (SIG[A-Z]+)")
#: Below this share of RAM free right after a SIGKILL, running out of memory is a likely cause.
LOW_MEMORY_SHARE = 0.10


def crashed(case: Case, status, lines: list[str], during: str) -> Diagnosis:
    """``during``: "while starting", "while answering", or "" when the log cannot tell.

    A signal from outside (a ``kill``, a shutdown) is said as such, not as a crash; memory is
    offered as the cause only when the log says so, or memory is short now after a SIGKILL."""
    facts: dict[str, object] = {}
    text = "The engine stopped unexpectedly" + (f" {during}" if during else "")
    if status is not None:
        facts.update({"exit_code": status.code, "signal": status.signal})
        text = f"The engine {status.sentence}" + (f" {during}" if during else "")
        if status.signal:
            try:
                facts["signal_name"] = signal.Signals(status.signal).name
            except ValueError:
                pass
    told = next((m.group(1) for line in reversed(lines) if (m := _WORKER_SIGNAL.search(line))), None)
    if told and not (status is not None and status.signal):  # the worker stopped cleanly on a signal
        facts["signal_name"] = told
        return _stopped_from_outside(told, during, facts)
    m = best_match(lines, getattr(case.plan, "engine", None) or (case.engine.name if case.engine else None),
                   {"engine_crashed", "oom_load"})
    text += "."
    killed = (status is not None and status.signal == 9) or (m is not None and str(m.facts.get("signal")) == "9")
    memory_in_log = m is not None and m.kind == Kind.OOM_LOAD
    free = psutil.virtual_memory()
    memory_short = killed and free.available < free.total * LOW_MEMORY_SHARE
    if killed:
        facts["ram_available_bytes"] = free.available
        text += ("\nIt was killed with SIGKILL: by you or another program, or by the system when memory ran out "
                 f"(the kernel's out-of-memory killer). {units.size(free.available)} of memory is free now")
        text += (", so memory is the likely cause." if memory_short else
                 ", so memory does not look like the cause.")
    if m:
        text += f"\nLast error in the log: {m.line}"
        facts.update(m.facts)
    fixes = [Fix("Restart the engine", {}, "Relaunch with the same settings and send the message again.",
                 action="relaunch")]
    out_of_memory = memory_in_log or memory_short
    fixes += case.fixes(Kind.ENGINE_CRASHED, dict(facts, out_of_memory=out_of_memory))
    title = "The engine was killed" if killed and not m else "The engine crashed"
    return Diagnosis(Kind.ENGINE_CRASHED, title + (f" {during}" if during else ""), text, facts, fixes)


def _stopped_from_outside(name: str, during: str, facts: dict) -> Diagnosis:
    text = (f"The engine received {name} {during or 'while running'} and stopped: something outside Ember sent it "
            "(a `kill` command, a task manager, or the system shutting down). Nothing is wrong with the model "
            "or its settings.")
    return Diagnosis(Kind.ENGINE_CRASHED, "The engine was stopped from outside Ember", text, facts,
                     [Fix("Start it again", {}, "Relaunch with the same settings and send the message again.",
                          action="relaunch")])


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


_GPU_WORDS = {
    "driver_too_old": "The NVIDIA driver is older than the CUDA version this build of {engine} was made for, so "
                      "{engine} cannot use the GPU.",
    "no_device": "{engine} found no CUDA GPU it may use. The GPU may be hidden from it (CUDA_VISIBLE_DEVICES, a "
                 "container started without GPU access), busy in an exclusive mode, or its driver not loaded.",
    "no_driver": "{engine} found no NVIDIA driver: there is no NVIDIA GPU here, or its driver is not installed.",
    "cpu_build": "This build of {engine} has no GPU support (a CPU-only build), so it cannot put any work on the GPU.",
    "init_failed": "{engine} could not start CUDA on this computer's GPU{detail}.",
    "gpu_too_old": "This GPU is older than {engine} supports (compute capability below {min_capability}).",
}


def gpu_unusable(case: Case, facts_in: dict, line: str) -> Diagnosis:
    """A GPU is present but the engine cannot use it: the driver, the GPU's visibility, or the engine's build."""
    problem = str(facts_in.get("problem") or "init_failed")
    facts = dict(facts_in, problem=problem)
    detail = facts_in.get("detail") or (f" (CUDA error {facts_in['cuda_error']})" if facts_in.get("cuda_error") else "")
    text = _GPU_WORDS.get(problem, _GPU_WORDS["init_failed"]).format(
        engine=case.label, detail=f": {detail}" if detail and not str(detail).startswith(" (") else detail,
        min_capability=facts_in.get("min_capability", "its minimum"))
    if facts_in.get("driver_cuda"):  # torch's "found version 11040": the newest CUDA the driver runs
        v = int(facts_in["driver_cuda"])
        facts["driver_cuda"] = f"{v // 1000}.{v % 1000 // 10}"
        text += f"\nThe installed driver runs CUDA {facts['driver_cuda']} at most."
    text += f"\nThe log says: {line}"
    fixes = case.fixes(Kind.GPU_UNUSABLE, facts)  # the engine's way to run without the GPU
    install = case.engine.gpu_install if case.engine is not None else None
    if problem == "driver_too_old":
        fixes.insert(0, Fix("Update the NVIDIA driver", {}, "Install the newest driver for your GPU (nvidia.com, or "
                            "your system's driver manager), then restart the computer."))
        if install:
            fixes.append(Fix(f"Install a {case.label} build for your driver's CUDA", {}, install, action="install"))
    elif problem == "cpu_build" and install:
        fixes.insert(0, Fix(f"Install {case.label}'s GPU build", {}, install, action="install"))
    elif problem == "gpu_too_old":
        fixes.append(Fix("Use the llama.cpp engine", {}, "It runs on older GPUs, and on the CPU (a GGUF file of the "
                         "model is needed).", action="use_engine:llamacpp"))
    elif problem in ("no_device", "no_driver", "init_failed"):
        fixes.insert(0, Fix("Check that the GPU is visible", {},
                            "`nvidia-smi` should list it; CUDA_VISIBLE_DEVICES must not hide it; in a container, "
                            "start it with GPU access (docker --gpus all)."))
    return Diagnosis(Kind.GPU_UNUSABLE, "The GPU is there, but the engine cannot use it", text, facts, fixes)


_FEATURE_WORDS = {"embeddings": "embeddings (/v1/embeddings)", "reranking": "reranking (/v1/rerank)",
                  "metrics": "the /metrics endpoint", "slots": "the /slots endpoint"}


def feature_off(case: Case, facts: dict, message: str) -> Diagnosis:
    """A request for a server feature the engine was started without (llama.cpp: embeddings, /metrics...)."""
    feature = str(facts.get("feature") or "")
    what = _FEATURE_WORDS.get(feature, "this feature")
    fixes = case.fixes(Kind.NOT_SUPPORTED, facts)
    if not fixes:
        fixes = [Fix("Check the parameters", {}, "", action="edit_parameters")]
    return Diagnosis(Kind.NOT_SUPPORTED, f"The engine was started without {what}",
                     f"The request needs {what}, which {case.label} only serves when it is switched on at launch."
                     f"\nThe engine said: {message}", dict(facts, message=message), fixes)


def stalled(seconds: float, paused: bool, timeout: float) -> Diagnosis:
    """The engine went silent mid-reply (:class:`~engines.chat.client.EngineStalled`); Ember stopped it."""
    if paused:
        text = (f"The engine's process was paused (stopped by a signal such as SIGSTOP, or held by a debugger): "
                f"no token and no log line for {seconds:.0f} s. Ember stopped it so it does not hold the memory.")
    else:
        text = (f"No token and no log line came from the engine for {seconds:.0f} s, longer than Ember waits "
                f"({timeout:.0f} s, the stall_timeout_seconds setting). Ember stopped it so it does not hold "
                "the memory.")
    fixes = [Fix("Restart the engine", {}, "Relaunch with the same settings and send the message again.",
                 action="relaunch")]
    if not paused:
        fixes.append(Fix("Wait longer before giving up", {}, f"If the model is only slow here, raise "
                         f"stall_timeout_seconds in Ember's settings.json (now {timeout:.0f} s).", action="settings"))
    return Diagnosis(Kind.ENGINE_STALLED, "The engine stopped responding",
                     text, {"silent_seconds": round(seconds, 1), "paused": paused, "timeout": timeout}, fixes)
