"""The ``ember`` command line: the same core functions the desktop app calls.

``ember`` with no arguments starts the desktop app; that choice is made by
``desktop.launcher`` (the console script), so this module never imports Qt.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from engines import actions, logfile, paths, settings
from engines.chat import completion_mode, remotes, reply_limit, stop_reason
from engines.chat.client import ChatStream, ClientError
from engines.chat.terminal import TerminalReply
from engines.cluster import diagnosis as cluster_diagnosis
from engines.cluster import ops as cluster_ops
from engines.cluster import session as cluster_session
from engines.cluster import store as cluster_store
from engines.cluster.launching import ClusterPlan, ClusterPlanError
from engines.cluster.xinference import ClusterError, LaunchState
from engines.diagnosis import diagnose
from engines.gateway import keys as gateway_keys
from engines.gateway.config import GatewayConfig
from engines.gateway.server import Gateway, PortInUse
from engines.machine import gguf_info, hardware
from engines.models import catalog, downloads, recommend, records, store
from engines.running import engine_env, launch, supervisor, worker
from engines.running import params as P
from engines.running import backends
from engines.running.backends import ENGINES, LABELS, availability
from engines.running.manager import EngineCrashed, EngineManager
from engines.running.stall import StallWatch
from engines.units import MIB, gib
from engines.version import version

log = logging.getLogger(__name__)



def _hardware(args) -> hardware.HardwareProfile:
    if getattr(args, "hardware", None):
        return hardware.HardwareProfile.load(args.hardware)
    return hardware.detect()


# -- doctor -------------------------------------------------------------------

def doctor_report(hw: hardware.HardwareProfile) -> dict:
    engines = {}
    for e in ENGINES:
        a = availability(e)
        engines[e] = {"label": LABELS[e], "installed": a.installed, "version": a.version,
                      "install_command": None if a.installed else a.install_command,
                      "interpreter": getattr(a, "interpreter", None) or sys.executable,
                      "problem": getattr(a, "problem", None)}
    gpus = []
    for g in hw.gpus:
        note = None
        if not g.usable_by_llamacpp:
            note = (f"the installed llama.cpp build ({hw.llamacpp_build}) cannot use this GPU"
                    + (f"; install the CUDA build: {backends.get('llamacpp').gpu_install}" if g.backend == "cuda" else ""))
        gpus.append({"name": g.name, "llamacpp_can_use": g.usable_by_llamacpp, "note": note})
    return {"version": version(), "hardware": hw.to_dict(), "engines": engines, "gpus": gpus}


def cmd_doctor(args) -> int:
    hw = _hardware(args)
    report = doctor_report(hw)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Ember {report['version']}")
    print(f"System: {hw.os} {hw.arch}, {hw.cpu_name or 'CPU'} ({hw.cpu_cores} cores), "
          f"RAM {gib(hw.ram_available_bytes)} free of {gib(hw.ram_total_bytes)}")
    if not hw.gpus:
        print("GPUs: none found; models run on the CPU")
    for g, info in zip(hw.gpus, report["gpus"]):
        print(f"GPU: {g.name} ({g.backend}), {gib(g.memory_free_bytes)} free of {gib(g.memory_total_bytes)}")
        if info["note"]:
            print(f"     {info['note']}")
    print(f"llama.cpp build: {hw.llamacpp_build}")
    print("Engines:")
    for e, info in report["engines"].items():
        state = f"installed ({info['version']})" if info["installed"] else f"not installed: {info['install_command']}"
        print(f"  {info['label']:<13} {state}")
        if e != "llamacpp" and (info["installed"] or info.get("problem")):
            print(f"  {'':<13} Python: {info['interpreter']}" + (f" ({info['problem']})" if info.get("problem") else ""))
    return 0


# -- models -------------------------------------------------------------------

def model_rows(hw: hardware.HardwareProfile, rules_only: bool = False) -> list[dict]:
    """Every row of ``ember models --json``: fit, recommendation, and chat or completion for local models.

    ``rules_only``: judge engines by the rules alone (a profile of another machine).
    """
    local = store.local_models()
    rows = catalog.rows(hw, installed=None, local=local) if rules_only else catalog.rows(hw, local=local)
    recommend.annotate(rows, hw)
    modes = {spec.name: _mode(spec) for spec in local}
    for r in rows:
        decision = modes.get(r["name"]) if r["local"] else None
        r["mode"] = (decision.mode if decision else completion_mode.Mode.CHAT).value
        r["mode_note"] = decision.note if decision else ""
    return rows


BADGE = {"gpu": "fits on GPU", "partial": "partly on GPU", "cpu": "CPU only", "none": "does not fit",
         "unavailable": "no engine", "unknown": "fit unknown"}


def _model_line(r: dict) -> str:
    layers = f" {r['gpu_layers']}/{r['total_layers']} layers" if r["fit"] == "partial" else ""
    mark = f"  * recommended #{r['recommended_rank']}" if r.get("recommended") else ""
    line = (f"{r['name']:<40} {r['format']:<8} {r['quantization']:<8} {LABELS.get(r['engine'], '-'):<12} "
            f"{BADGE.get(r['fit'], r['fit'])}{layers}{mark}")
    if r["local"] and r.get("mode") == completion_mode.Mode.COMPLETION.value:
        line += f"\n{'':<4}{r.get('description') or 'a text-completion model: ' + r['mode_note']}"
    return line


def _print_refresh(result, out=None) -> None:
    """What `ember models --refresh` found: a line per changed entry, then the summary; failures on stderr."""
    out = out or sys.stdout
    for c in result.changes:
        print(f"changed: {c.variant}: {c.detail}", file=out)
    for repo, why in result.failed.items():
        print(f"ember: could not list {repo}: {why}", file=sys.stderr)
    if result.offline:
        print(f"ember: the Hub was not asked ({result.offline_reason}): using the listings saved earlier",
              file=sys.stderr)
    print(result.summary() + ".", file=out)


def cmd_models(args) -> int:
    if getattr(args, "refresh", False):
        result = catalog.refresh()
        _print_refresh(result, sys.stderr if args.json else sys.stdout)
        if not args.json:
            print()
        if result.failed and not (result.listed or result.reused):
            return 1  # online, and not one repository could be listed: say so by the exit status too
    hw = _hardware(args)
    try:
        store.ensure_starter()
    except paths.NoSpace as exc:  # the list still shows; the starter is left out, and why is said
        print(f"ember: warning: the starter model is not listed: {exc.message}", file=sys.stderr)
    except store.ModelError:
        pass  # not installed: the list says nothing of it
    rows = model_rows(hw, rules_only=bool(getattr(args, "hardware", None)))
    if getattr(args, "fits", False):
        rows = [r for r in rows if r["fit"] in ("gpu", "partial", "cpu")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(_model_line(r))
    picked = recommend.recommended(rows)
    if picked:
        print("\nRecommended chat models for this computer (`ember pull NAME`, then `ember chat NAME`):")
        for r in picked:
            print(f"  {r['recommended_rank']}. {r['name']}: {r.get('recommended_because', '')}")
    else:
        print("\nNo chat model in the catalog fits this computer at a usable speed.")
    return 0


# -- pull ---------------------------------------------------------------------

def _bar(pr: downloads.Progress, width: int = 30) -> str:
    frac = pr.fraction
    eta = "--:--" if pr.eta_s is None else f"{int(pr.eta_s) // 60:02d}:{int(pr.eta_s) % 60:02d}"
    filled = int(frac * width)
    return (f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% {pr.done_bytes / MIB:,.1f}/"
            f"{pr.total_bytes / MIB:,.1f} MiB  {pr.speed_bps / MIB:,.1f} MiB/s  ETA {eta}")


def cmd_pull(args) -> int:
    """Download with a progress bar on a terminal, plain lines otherwise; Ctrl-C pauses (rerun resumes)."""
    tty = sys.stdout.isatty()
    stop = {"why": None}
    last = {"t": 0.0, "pct": -1}

    def on_sigint(signum, frame):
        stop["why"] = "pause"

    def listener(pr) -> None:
        if pr.state != "downloading":
            return
        if tty:
            print("\r" + _bar(pr), end="", flush=True)
        else:
            pct = int(pr.fraction * 10) * 10
            if pct != last["pct"]:
                last["pct"] = pct
                print(f"{pr.name}: {pr.done_bytes:,} of {pr.total_bytes:,} bytes ({pct}%)", flush=True)

    if getattr(args, "again", False):  # a diagnosis' "Download the model again": the files were broken
        freed = downloads.delete(args.model)
        print(f"Deleted {args.model}'s files ({freed:,} bytes); downloading them again.", file=sys.stderr)
    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        pr = downloads.download(args.model, listener, lambda: stop["why"])
    except downloads.DownloadError as exc:
        if tty:
            print()
        if getattr(args, "json", False):
            print(json.dumps(exc.to_dict(), indent=2))
        return _fail(exc.message)
    finally:
        signal.signal(signal.SIGINT, old)
    if tty:
        print()
    if pr.state == "paused":
        print(f"Paused at {pr.done_bytes:,} of {pr.total_bytes:,} bytes; the partial file is kept. "
              f"Run `ember pull {args.model}` again to resume.")
        return 130
    print(f"{pr.name} is ready (verified): {records.ready_path(pr.name) or pr.filename}")
    return 0


# -- serve / chat -------------------------------------------------------------

def _plan_from_args(args) -> launch.LaunchPlan:
    return launch.plan(args.model, _hardware(args), args.engine, args.set or [])


def _fail(message: str, code: int = 1) -> int:
    print(f"ember: {message}", file=sys.stderr)
    return code


def _situation(args, plan=None, proc=None) -> actions.Situation:
    """What the failed command was, so each fix can say the command that does it."""
    command = getattr(args, "command", None) or "chat"
    chosen = bool(getattr(args, "engine", None))
    if plan is not None:
        return actions.Situation.of_plan(plan, str(proc.log_path) if proc is not None else None, command, chosen)
    pairs = dict(p.split("=", 1) for p in (getattr(args, "set", None) or []) if "=" in p)
    if command == "remote":
        return actions.Situation(remote=getattr(args, "name", None), remote_url=getattr(args, "url", None),
                                 command=command)
    return actions.Situation(getattr(args, "model", None), getattr(args, "engine", None), pairs, chosen,
                             command=command)


def _print_diagnosis(d, args, where: actions.Situation, extra: dict | None = None, tail: int = 10) -> None:
    """A diagnosis on stderr: its words and each fix with its command, or ``--json``."""
    if getattr(args, "json", False):
        print(json.dumps({**(extra or {}), **actions.to_dict(d, where)}, indent=2), file=sys.stderr)
    else:
        print(actions.render_text(d, where, tail), file=sys.stderr)


def _explain(exc: BaseException, args, proc=None, plan=None, extra: dict | None = None) -> int:
    """Print a failure: the diagnosis when available, the error's own message otherwise.

    ``extra``: fields added to the ``--json`` object (a chat's ``stop_reason``)."""
    d = diagnose.diagnose_exception(exc, proc=proc, plan=plan)
    if d is not None:
        _print_diagnosis(d, args, _situation(args, plan, proc), extra)
        return 1
    msg = getattr(exc, "message", None) or str(exc)
    return _fail(msg)


def _unexpected(exc: BaseException, args) -> int:
    """A failure no command expected: one sentence and where the details are, never a traceback."""
    where = None
    try:
        where = paths.log_dir() / "ember-cli.log"
        handler = logfile.file_handler(where)
        if handler is not None:
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.error("ember %s failed", " ".join(sys.argv[1:]), exc_info=exc)
            log.removeHandler(handler)
            handler.close()
    except OSError:
        where = None
    detail = f"; the details are in {where}" if where else ""
    return _fail(f"unexpected error ({type(exc).__name__}: {exc}){detail}. This is a bug in Ember: "
                 "please report it with that log")


def _plan(args) -> tuple[launch.LaunchPlan | None, int]:
    try:
        plan = _plan_from_args(args)
    except (P.ParamError, launch.PlanError, store.ModelError, ValueError) as exc:
        return None, _explain(exc, args)
    for w in plan.warnings:
        print(f"ember: warning: {w}", file=sys.stderr)
    if plan.fit is not None and plan.fit.devices and not getattr(args, "quiet", False):
        print(f"ember: {plan.fit.summary()}", file=sys.stderr)
    return plan, 0


def _launch(plan: launch.LaunchPlan, args):
    try:
        return launch.start(plan), 0
    except supervisor.EngineStartError as exc:
        return None, _explain(exc, args, plan=plan)


def _start(args):
    plan, code = _plan(args)
    if plan is None:
        return None, None, code
    proc, code = _launch(plan, args)
    return proc, plan, code


def cmd_serve(args) -> int:
    """``ember serve``: the local API (every model, started on demand, on the fixed port);
    ``ember serve MODEL``: that model only, started now, on a free port unless ``--port``."""
    values = settings.load()
    port = args.port if args.port is not None else (0 if args.model else GatewayConfig.from_settings(values).port)
    plan = None
    if args.model:
        plan, code = _plan(args)
        if plan is None:
            return code
    config = GatewayConfig.from_settings(values, port=port, pinned=plan.model.name if plan else None)
    manager = EngineManager(idle_timeout=None if plan else config.idle_timeout, max_loaded=config.max_loaded)
    gw = Gateway(manager, config)
    try:
        gw.bind()
    except PortInUse as exc:
        return _fail(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    manager.subscribe(lambda event: _say_crash(event, args))
    try:
        info = {"base_url": gw.base_url, "api_key": gateway_keys.get(), "pid": os.getpid()}
        gw.start(wait=False)  # Uvicorn comes up while the engine loads
        if plan is not None:
            try:
                run = manager.launch(plan)
            except supervisor.EngineStartError as exc:
                return _explain(exc, args, plan=plan)
            loaded = run.proc.meta.get("loaded")
            if loaded is not None and loaded.summary() and not args.quiet:
                print(f"ember: loaded: {loaded.summary()}", file=sys.stderr)
            # "model": the id /v1/models lists and every answer carries; "mode": "completion" for a model
            # without a chat template (send text to /v1/completions); "pid": the engine's process
            info.update(model=plan.model.name, mode=_mode(plan.model).mode.value, engine=plan.engine,
                        pid=run.proc.pid)
        else:
            info["models"] = gw.router.local_names()
        gw.wait_started()
        print(json.dumps(info), flush=True)
        if not args.quiet and plan is None:
            print(f"ember: the local API is at {gw.base_url}; models start when a request names them. "
                  f"Ctrl-C stops it.", file=sys.stderr)
        stop.wait()
    finally:
        gw.begin_stop()
        manager.shutdown()
        gw.stop()
    return 0


def _say_crash(event, args) -> None:
    """An engine behind ``ember serve`` died: say why on stderr (the next request starts it again)."""
    if isinstance(event, EngineCrashed):
        _explain(event.error, args, proc=event.running.proc, plan=event.plan)
        print(f"ember: {event.name} stopped; the next request starts it again.", file=sys.stderr)


def _reply_limit(args) -> int:
    """``--max-tokens``, else the ``reply_limit`` setting (the chat window's too; a broken value: the default)."""
    if getattr(args, "max_tokens", None):
        return int(args.max_tokens)
    try:
        return reply_limit.clamp(settings.get("reply_limit"))
    except reply_limit.ReplyLimitError:
        return int(settings.DEFAULTS["reply_limit"])


def _request_context(plan: launch.LaunchPlan) -> int | None:
    """The tokens one request may use with this plan (a reply cannot be longer)."""
    shape = backends.get(plan.engine).context(plan)
    return shape.per_slot or shape.total


def _mode(spec: store.ModelSpec) -> completion_mode.ModeDecision:
    try:
        return completion_mode.mode_of(spec)
    except gguf_info.GGUFError as exc:  # the engine will say what is wrong with the file
        return completion_mode.ModeDecision(completion_mode.Mode.CHAT, f"unreadable: {exc.problem}")


def _say_completion_mode(spec: store.ModelSpec, decision: completion_mode.ModeDecision) -> None:
    """Said once per ``ember chat``: a model without a chat template continues text."""
    if decision.mode is completion_mode.Mode.COMPLETION:
        log.info("%s runs in completion mode: %s", spec.name, decision.reason)
        print(f"ember: {spec.name} {decision.note}: its files have no chat template (a base model), so Ember "
              "sends your words as text to continue. For answers to questions, download a chat model: "
              "`ember models` marks the recommended ones.", file=sys.stderr)


def _stream_reply(stream: ChatStream, args, proc=None, plan=None) -> tuple[str | None, int]:
    """Stream one reply, then name why it ended (stderr); (the reply as shown, exit code)."""
    reply = TerminalReply(stream, as_json=bool(getattr(args, "json", False)))
    try:
        with StallWatch(stream, proc) if proc is not None else contextlib.nullcontext():
            reply.run()
    except Exception as exc:  # client errors go through diagnosis
        reason = stop_reason.from_error(exc)
        if not getattr(args, "json", False):
            print(f"ember: {reason.sentence()}", file=sys.stderr)
        return None, _explain(exc, args, proc, plan, extra={"stop_reason": reason.value})
    reply.print_report()
    if plan is not None and reply.finished is not None and not reply.watch.repeating:
        d = diagnose.diagnose_finish(reply.finished, plan=plan)
        if d is not None:
            print(actions.render_text(d, _situation(args, plan, proc)), file=sys.stderr)
    return reply.watch.text, 0


def _chat_once(proc, plan, messages, args, mode: completion_mode.ModeDecision) -> tuple[str | None, int]:
    completion = (completion_mode.completion_request(messages)
                  if mode.mode is completion_mode.Mode.COMPLETION else None)
    stream = ChatStream(proc.base_url, messages, proc.api_key, model=plan.model.name, context=_request_context(plan),
                        max_tokens=_reply_limit(args), temperature=args.temperature, completion=completion)
    return _stream_reply(stream, args, proc, plan)


def cmd_chat(args) -> int:
    if getattr(args, "on", None):
        return cmd_cluster_chat(args)
    plan, code = _plan(args)
    if plan is None:
        return code
    mode = _mode(plan.model)
    _say_completion_mode(plan.model, mode)
    proc, code = _launch(plan, args)
    if proc is None:
        return code
    try:
        return _converse(args, f"{plan.model.display_name or plan.model.name} ({LABELS[plan.engine]})",
                         lambda messages: _chat_once(proc, plan, messages, args, mode))
    finally:
        proc.stop()


def _converse(args, who: str, reply: Callable[[list[dict]], tuple[str | None, int]]) -> int:
    """``ember chat``'s one prompt (``args.prompt``), else an interactive session until an empty line
    or Ctrl-D; ``reply(messages)`` answers, returning (the reply as shown, or None when it failed; exit code)."""
    messages: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt:
        messages.append({"role": "user", "content": " ".join(args.prompt)})
        return reply(messages)[1]
    print(f"Chatting with {who}. Empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line})
        answer, code = reply(messages)
        if answer is None:
            return code
        messages.append({"role": "assistant", "content": answer})


def cmd_diagnose(args) -> int:
    """The diagnosis of an engine log (Ember's own, or one pasted from elsewhere; ``-`` reads stdin)."""
    source = "standard input" if args.logfile == "-" else args.logfile
    try:
        text = sys.stdin.read() if args.logfile == "-" else Path(args.logfile).read_text(encoding="utf-8",
                                                                                          errors="replace")
    except OSError as exc:
        return _fail(f"cannot read {source}: {exc.strerror or exc}")
    d = diagnose.diagnose_text(text, args.engine, None if args.logfile == "-" else args.logfile)
    if d is None:
        return _fail(f"nothing recognised in {source}: no failure Ember knows in these lines")
    where = actions.Situation(engine=args.engine, log_path=None if args.logfile == "-" else args.logfile,
                              **_launched(text))
    if args.json:
        print(json.dumps(actions.to_dict(d, where), indent=2))
    else:
        print(actions.render_text(d, where, tail=0))  # the lines are the user's own file
    return 0


def _launched(text: str) -> dict:
    """The model and engine of the last ``# ember launch`` header in an Ember engine log (for the fixes'
    commands); nothing for a log from elsewhere."""
    for line in reversed(text.splitlines()):
        if line.startswith("# ember launch "):
            try:
                header = json.loads(line.split(" ", 4)[4])
            except (IndexError, ValueError):
                return {}
            if not isinstance(header, dict):
                return {}
            return {"model": header.get("model"), "engine": header.get("engine")}
    return {}


def cmd_settings(args) -> int:
    """``ember settings``: every setting; ``KEY``: one; ``KEY VALUE``: set it (JSON, else text; ``null`` resets)."""
    values = settings.load()
    known = set(settings.DEFAULTS)
    if args.key is None:
        for k in sorted(values):
            print(f"{k} = {json.dumps(values[k])}")
        print(f"({settings.path()})")
        return 0
    if args.key not in known and not args.key.startswith(settings.ENGINE_PYTHON):
        close = [k for k in known if args.key.split("_")[0] in k]
        return _fail(f"{args.key} is not one of Ember's settings" + (f"; did you mean {', '.join(close)}?" if close
                                                                      else "; `ember settings` lists them"))
    if args.value is None:
        print(json.dumps(values.get(args.key)))
        return 0
    try:
        value = json.loads(args.value)
    except ValueError:
        value = args.value
    default = settings.DEFAULTS.get(args.key)
    if value is not None and default is not None and type(value) is not type(default) and not (
            isinstance(default, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool)):
        return _fail(f"{args.key} takes {type(default).__name__} values like {json.dumps(default)}, "
                     f"not {args.value!r}")
    settings.set(args.key, value)
    print(f"{args.key} = {json.dumps(value)}")
    return 0


def cmd_params(args) -> int:
    schema = backends.get(args.engine).schema()
    rows = [{"key": s.key, "type": s.type, "default": s.default, "expects": s.expects} for s in schema.values()]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for r in rows:
            print(f"{r['key']:<40} {r['type']:<6} default {r['default']!r}")
    return 0


# -- engine environments --------------------------------------------------------

def cmd_engine_python(args) -> int:
    """Show or set the Python interpreter that runs an engine (vLLM/SGLang live in their own environments)."""
    if args.reset:
        engine_env.set_python(args.engine, None)
    elif args.python:
        if not Path(args.python).expanduser().exists():
            return _fail(f"{args.python} does not exist; give the path to the python of the environment "
                         f"where {LABELS[args.engine]} is installed")
        engine_env.set_python(args.engine, str(Path(args.python).expanduser().absolute()))
    a = availability(args.engine)
    where = engine_env.configured_python(args.engine) or f"Ember's own ({a.interpreter or 'none'})"
    print(f"{LABELS[args.engine]}: Python {where}")
    if a.installed:
        print(f"  {LABELS[args.engine]} {a.version} found")
        return 0
    print(f"  not installed there{': ' + a.problem if a.problem else ''}; install with: {a.install_command}")
    return 1 if args.python else 0


# -- remote endpoints -----------------------------------------------------------

def _confirm(question: str, args) -> bool:
    """Ask on a terminal (y/N); elsewhere (a script, a key on stdin) the answer is no."""
    if getattr(args, "yes", False):
        return True
    if getattr(args, "key_stdin", False) or not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _remote_add(args) -> int:
    """Check the name, URL, port and key, then ask the server for its models; keep the entry only when it
    answered (or the user says to keep it anyway), and never overwrite one without asking."""
    key = (sys.stdin.readline().strip() or None) if args.key_stdin else None
    replace = args.replace
    try:
        r = remotes.check_new(args.name, args.url, key, args.key_env, replace)
    except remotes.RemoteError as exc:
        if exc.kind != "exists" or not _confirm(f"A remote named {args.name} exists. Replace it?", args):
            return _fail(exc.message)
        replace = True
        r = remotes.check_new(args.name, args.url, key, args.key_env, replace)
    ids = None
    if not args.no_check:
        try:
            ids = remotes.probe(r, key)
        except ClientError as exc:
            _explain(exc, args)
            if not _confirm(f"{r.url} did not answer as an OpenAI-compatible server. Add {r.name} anyway?", args):
                return _fail(f"{r.name} was not added. Check the address and the key, or add it without asking "
                             "the server with --no-check")
    r = remotes.add(r.name, r.url, key=key, key_env=args.key_env, replace=replace)
    where = {"keyring": "the API key is in the system keyring",
             "env": f"the API key is read from ${r.key_env}", "none": "no API key"}[r.key_source]
    print(f"{'Replaced' if replace else 'Added'} {r.name}: {r.url} ({where})")
    if ids is not None:
        print(f"  models: {', '.join(ids) if ids else 'none listed'}")
    return 0


def cmd_remote(args) -> int:
    action = args.remote_action
    try:
        if action == "add":
            return _remote_add(args)
        elif action == "list":
            rows = []
            for r in remotes.list_remotes():
                try:
                    state = ", ".join(remotes.models(r)) or "no models"
                except Exception as exc:
                    state = f"not answering ({type(exc).__name__}: {getattr(exc, 'error_message', exc)})"
                rows.append({"name": r.name, "url": r.url, "key": r.key_source, "key_env": r.key_env,
                             "models": state})
            if args.json:
                print(json.dumps(rows, indent=2))
            for row in [] if args.json else rows:
                print(f"{row['name']:<20} {row['url']:<40} key: {row['key']:<8} {row['models']}")
        elif action == "remove":
            if not remotes.remove(args.name):
                return _fail(f"no remote named {args.name}")
            print(f"Removed {args.name}")
        elif action == "chat":
            return _remote_chat(args)
    except remotes.RemoteError as exc:
        return _fail(exc.message)
    except ClientError as exc:  # the server did not answer, or refused: the diagnosis says which
        return _explain(exc, args)
    return 0


def _remote_chat(args) -> int:
    ep = remotes.endpoint(args.name, args.model)
    stream = ChatStream(ep.base_url, [{"role": "user", "content": " ".join(args.prompt)}], ep.api_key,
                        model=ep.model_id, max_tokens=_reply_limit(args))
    return _stream_reply(stream, args)[1]


def _remote_parser(sub) -> None:
    r = sub.add_parser("remote", help="remote OpenAI-compatible servers (Xinference, vLLM, SGLang, any URL)")
    rs = r.add_subparsers(dest="remote_action", required=True)
    ra = rs.add_parser("add", help="add a server; its models appear beside the local ones")
    ra.add_argument("name")
    ra.add_argument("url", help="the server's OpenAI base URL, e.g. http://host:9997/v1")
    key = ra.add_mutually_exclusive_group()
    key.add_argument("--key-env", metavar="VAR", help="read the API key from this environment variable")
    key.add_argument("--key-stdin", action="store_true", help="read the API key from stdin; kept in the keyring")
    ra.add_argument("--replace", action="store_true", help="replace a remote of the same name without asking")
    ra.add_argument("--no-check", action="store_true",
                    help="add it without asking the server for its models (a server that is down now)")
    rl = rs.add_parser("list", help="the servers and the models each lists")
    rl.add_argument("--json", action="store_true")
    rr = rs.add_parser("remove")
    rr.add_argument("name")
    rc = rs.add_parser("chat", help="one prompt through a remote server")
    rc.add_argument("name")
    rc.add_argument("prompt", nargs="+")
    rc.add_argument("--model", help="the model id (default: the first the server lists)")
    rc.add_argument("--max-tokens", type=TOKENS, default=None,
                    help="reply limit in tokens (default: the reply_limit setting, 1,024)")
    rc.add_argument("--json", action="store_true", help="print the stop reason and a failure's diagnosis as JSON")
    for sp in (ra, rl, rr, rc):
        sp.set_defaults(func=cmd_remote)


# -- clusters (Xinference) ------------------------------------------------------

def _cluster_fail(exc: BaseException, args, plan: ClusterPlan | None = None, cluster: str | None = None) -> int:
    """A cluster failure as a diagnosis (the same words and fixes as a local one)."""
    if isinstance(exc, (ClusterError, cluster_store.ClusterConfigError)):
        d = cluster_diagnosis.diagnose_cluster_error(exc, plan, cluster)
    else:
        d = cluster_diagnosis.diagnose_chat(exc, plan, None, cluster=cluster)
    if d is None:
        return _fail(getattr(exc, "message", None) or str(exc))
    if getattr(args, "json", False):
        print(json.dumps(d.to_dict(), indent=2), file=sys.stderr)
    else:
        print(d.render_text(), file=sys.stderr)
    return 1


def _progress_printer(uid: str) -> Callable[[LaunchState], None]:
    """Launch progress on stderr, one line per change of stage or tenth."""
    last = {"line": None}

    def show(st: LaunchState) -> None:
        pct = f" {int((st.progress or 0) * 100)}%" if st.progress is not None else ""
        line = f"ember: {uid}: {st.stage or st.status.lower()}{pct}"
        if line != last["line"]:
            last["line"] = line
            print(line, file=sys.stderr, flush=True)
    return show


def _cluster_launch(args, name: str, model: str):
    """Plan and launch on a cluster with progress; (plan, running model) or (None, exit code)."""
    try:
        plan = cluster_ops.plan(name, model, getattr(args, "engine", None), args.set or [],
                                getattr(args, "replicas", 1) or 1, _gpus(getattr(args, "gpus", None)))
    except (ClusterPlanError, P.ParamError) as exc:
        return None, _fail(exc.message)
    except (ClusterError, cluster_store.ClusterConfigError) as exc:
        return None, _cluster_fail(exc, args, cluster=name)
    for w in plan.warnings:
        print(f"ember: warning: {w}", file=sys.stderr)
    print(f"ember: launching {plan.uid} on {name} with {LABELS[plan.engine]} "
          f"({', '.join(f'{k} {v}' for k, v in plan.params.items())})", file=sys.stderr)
    try:
        running = cluster_ops.launch(plan, _progress_printer(plan.uid), replace=True)
    except (ClusterError, cluster_store.ClusterConfigError) as exc:
        return None, _cluster_fail(exc, args, plan)
    return (plan, running), 0


def _gpus(value: str | None):
    if value in (None, "auto"):
        return "auto"
    return int(value)


def cmd_cluster(args) -> int:
    action = args.cluster_action
    try:
        if action == "add":
            return _cluster_add(args)
        if action == "list":
            return _cluster_list(args)
        if action == "remove":
            if not cluster_ops.remove(args.name):
                return _fail(f"no cluster named {args.name}")
            print(f"Removed {args.name}")
            return 0
        if action == "models":
            return _cluster_models(args)
        if action == "launch":
            launched, code = _cluster_launch(args, args.name, args.model)
            if launched is None:
                return code
            plan, running = launched
            print(f"{running.uid} is running on {args.name} ({LABELS[plan.engine]}). Chat: ember chat {running.uid} "
                  f"--on {args.name}; API: {cluster_store.get(args.name).openai_url}, model {running.uid}")
            return 0
        if action == "stop":
            if not cluster_ops.stop(args.name, args.model):
                return _fail(f"{args.model} is not running on {args.name}")
            print(f"Stopped {args.model} on {args.name}")
            return 0
    except cluster_store.ClusterConfigError as exc:
        if exc.kind == "unknown":
            return _fail(exc.message)
        return _cluster_fail(exc, args, cluster=getattr(args, "name", None))
    except ClusterError as exc:
        return _cluster_fail(exc, args, cluster=getattr(args, "name", None))
    return 0


def _cluster_add(args) -> int:
    password = sys.stdin.readline().strip() if args.password_stdin else None
    key = sys.stdin.readline().strip() if args.key_stdin else None
    added = cluster_ops.add(args.name, args.url, args.user, password or None, args.password_env, key or None,
                            args.key_env)
    c, info = added.cluster, added.info
    auth = ("admin login " + c.user + f" (password {c.password.describe()})" if c.can_admin
            else f"API key {c.api_key.describe()}" if c.api_key.source != "none" else "no credentials")
    print(f"Added {c.name}: Xinference {info.version or '(version not told to an API key)'} at {c.url}; {auth}")
    workers = cluster_ops.Overview(c, info).devices_line
    print(f"  workers: {workers}")
    if added.warning:
        print(f"ember: warning: {added.warning}", file=sys.stderr)
    return 0


def _cluster_list(args) -> int:
    rows = []
    for c in cluster_store.list_clusters():
        try:
            with cluster_session.connect(c) as client:
                running = [m.uid for m in client.running()]
            state = ", ".join(running) or "no model running"
        except (ClusterError, cluster_store.ClusterConfigError) as exc:
            state = f"not answering ({exc.message})"
        rows.append({"name": c.name, "url": c.url, "user": c.user, "admin": c.can_admin,
                     "api_key": c.api_key.describe(), "running": state})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        who = f"admin {r['user']}" if r["admin"] else f"API key {r['api_key']}"
        print(f"{r['name']:<16} {r['url']:<32} {who:<24} {r['running']}")
    return 0


def _cluster_models(args) -> int:
    ov = cluster_ops.overview(args.name)
    if ov.error is not None:
        return _cluster_fail(ov.error, args, cluster=args.name)
    if args.json:
        print(json.dumps({"cluster": ov.cluster.name, "version": ov.info.version, "workers": ov.devices_line,
                          "running": [m.__dict__ for m in ov.running],
                          "launchable": [l.__dict__ for l in ov.launchable], "builtin": ov.builtin}, indent=2,
                         default=list))
        return 0
    print(f"{ov.cluster.name}: Xinference {ov.info.version or '?'} — {ov.devices_line}")
    print("Running:" if ov.running else "Running: none")
    for m in ov.running:
        ctx = f", context {m.context_length:,}" if m.context_length else ""
        print(f"  {m.uid:<30} {m.engine or '?'}{ctx}, {m.replicas} replica{'s' if m.replicas > 1 else ''}")
    if ov.launchable:
        print("Ember's models (registered on first launch):")
        for l in ov.launchable:
            print(f"  {l.name:<30} {BADGE.get(l.fit, l.fit)}: {l.fit_words}")
    elif not ov.files_reachable:
        print("Ember's models: the cluster runs on another computer and cannot read this one's files")
    shown = ov.builtin if args.all else ov.builtin[:12]
    print(f"Xinference's built-in chat models ({len(ov.builtin)}): {', '.join(shown)}"
          + ("" if args.all or len(ov.builtin) <= 12 else ", ... (--all lists them)"))
    return 0


def cmd_cluster_chat(args) -> int:
    """``ember chat MODEL --on CLUSTER``: the running model there (launched first when it is not, or when
    ``--set`` asks for other parameters: how a diagnosis fix is applied)."""
    name = args.on
    try:
        cluster = cluster_store.get(name)
        running = None if args.set else cluster_ops.find_running(name, args.model)
    except cluster_store.ClusterConfigError as exc:
        return _fail(exc.message)
    except ClusterError as exc:
        return _cluster_fail(exc, args, cluster=name)
    if running is None:
        launched, code = _cluster_launch(args, name, args.model)
        if launched is None:
            return code
        plan, running = launched
        print(f"ember: {running.uid} keeps running on {name}; stop it with `ember cluster stop {name} "
              f"{running.uid}`", file=sys.stderr)
    else:
        plan = cluster_ops.plan_of_running(name, running)
    try:
        client = cluster_session.connect(cluster)
    except (ClusterError, cluster_store.ClusterConfigError) as exc:
        return _cluster_fail(exc, args, plan)
    try:
        return _converse(args, f"{running.uid} on {name}",
                         lambda messages: _cluster_reply(client, plan, messages, args))
    finally:
        client.close()


def _cluster_reply(client, plan: ClusterPlan, messages: list[dict], args) -> tuple[str | None, int]:
    """One streamed reply from the cluster; a failure is diagnosed from the model's events."""
    since = time.time()  # the request's start: only its events are read
    stream = ChatStream(cluster_store.get(plan.cluster).openai_url, messages, client.inference_key, model=plan.uid,
                        max_tokens=_reply_limit(args), temperature=args.temperature)
    reply = TerminalReply(stream, as_json=bool(getattr(args, "json", False)))
    try:
        reply.run()
    except Exception as exc:
        reason = stop_reason.from_error(exc)
        d = cluster_diagnosis.diagnose_chat(exc, plan, client, since)
        if getattr(args, "json", False):
            print(json.dumps({"stop_reason": reason.value, **(d.to_dict() if d else {"error": str(exc)})}, indent=2),
                  file=sys.stderr)
        else:
            print(f"ember: {reason.sentence()}", file=sys.stderr)
            print(d.render_text() if d else f"ember: {exc}", file=sys.stderr)
        return None, 1
    reply.print_report()
    return reply.watch.text, 0


def _cluster_parser(sub) -> None:
    cl = sub.add_parser("cluster", help="Xinference clusters: add one, see its models, launch and stop them there")
    cs = cl.add_subparsers(dest="cluster_action", required=True)
    ca = cs.add_parser("add", help="add a cluster: Ember asks it what it is, and keeps where its secrets are")
    ca.add_argument("name")
    ca.add_argument("url", help="the supervisor's address, e.g. http://gpu-box:9997")
    ca.add_argument("--user", help="an admin user (launching and stopping models needs one)")
    pw = ca.add_mutually_exclusive_group()
    pw.add_argument("--password-env", metavar="VAR", help="read the user's password from this environment variable")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin; kept in the keyring")
    key = ca.add_mutually_exclusive_group()
    key.add_argument("--key-env", metavar="VAR", help="an API key (list and chat only) from this variable")
    key.add_argument("--key-stdin", action="store_true", help="read an API key from stdin; kept in the keyring")
    cli = cs.add_parser("list", help="the clusters and what runs on each")
    cli.add_argument("--json", action="store_true")
    cr = cs.add_parser("remove", help="forget a cluster (and its secrets in the keyring)")
    cr.add_argument("name")
    cm = cs.add_parser("models", help="a cluster's workers, running models and what it can launch")
    cm.add_argument("name")
    cm.add_argument("--all", action="store_true", help="every built-in model name")
    cm.add_argument("--json", action="store_true")
    cla = cs.add_parser("launch", help="launch a model there (Ember's engine choice and parameters)")
    cla.add_argument("name")
    cla.add_argument("model", help="one of Ember's models (registered there first) or an Xinference model name")
    cla.add_argument("--engine", choices=ENGINES, help="override the engine Ember's rules choose")
    cla.add_argument("--set", action="append", metavar="KEY=VALUE", help="engine parameter (as for a local launch)")
    cla.add_argument("--replicas", type=int, default=1, help="copies of the model across workers (default 1)")
    cla.add_argument("--gpus", default="auto", help="GPUs per replica (default: auto)")
    cla.add_argument("--json", action="store_true", help="print a failure's diagnosis as JSON")
    cst = cs.add_parser("stop", help="stop a model there")
    cst.add_argument("name")
    cst.add_argument("model")
    for sp in (ca, cli, cr, cm, cla, cst):
        sp.set_defaults(func=cmd_cluster)


def _temperature(text: str) -> float:
    """``--temperature``: a finite number from 0 to 2 (NaN cannot even be sent as JSON)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a number from 0 to 2, got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"expects a number from 0 to 2, got {text}")
    return value


def _whole(low: int, high: int | None = None, what: str = "a whole number"):
    """An argparse type: a whole number from ``low`` (to ``high``), refused in words otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"from {low:,} to {high:,}" if high is not None else f"{low:,} or more"
            raise argparse.ArgumentTypeError(f"must be {what} {span}, not {value:,}")
        return value
    return parse


TOKENS = _whole(1, None, "a number of tokens")
PORT = _whole(0, 65535, "a port")


def _hw_opt(sp) -> None:
    sp.add_argument("--hardware", metavar="FILE", help="use a hardware profile (JSON) instead of detecting")


def _launch_opts(sp, optional_model: bool = False):
    sp.add_argument("model", nargs="?" if optional_model else None,
                    help="a name from `ember models`, or a path to a model file or folder")
    sp.add_argument("--engine", choices=ENGINES, help="override the engine the rules would choose")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="engine parameter, nested keys in dot notation (sampling.top_k=40); repeatable")
    sp.add_argument("--json", action="store_true",
                    help="print a failure's diagnosis (and a chat's stop reason) as JSON on stderr")
    sp.add_argument("-q", "--quiet", action="store_true")
    _hw_opt(sp)


def _launch_parsers(sub) -> None:
    """``serve`` and ``chat``: the commands that start a model."""
    s = sub.add_parser("serve", help="the local OpenAI-compatible API (every model, on demand) until Ctrl-C; "
                                     "with MODEL, that model only")
    _launch_opts(s, optional_model=True)
    s.add_argument("--port", type=PORT, default=None,
                   help="the port (default: the gateway_port setting, 5731; with MODEL, any free port; 0: any)")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("chat", help="chat with a model in the terminal")
    _launch_opts(c)
    c.add_argument("prompt", nargs="*", help="a single prompt; without it, an interactive session")
    c.add_argument("--system", help="system prompt")
    c.add_argument("--max-tokens", type=TOKENS, default=None,
                   help="reply limit in tokens (default: the reply_limit setting, 1,024)")
    c.add_argument("--temperature", type=_temperature, default=None, help="0 (always the likeliest word) to 2")
    c.add_argument("--on", metavar="CLUSTER", help="chat with MODEL on a cluster (launched there if not running)")
    c.add_argument("--replicas", type=int, default=1, help=argparse.SUPPRESS)
    c.add_argument("--gpus", default="auto", help=argparse.SUPPRESS)
    c.set_defaults(func=cmd_chat)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ember", description="Run large language models on this computer.")
    p.add_argument("--version", action="version", version=f"ember {version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="log what Ember does")
    sub = p.add_subparsers(dest="command")

    d = sub.add_parser("doctor", help="hardware, engines, and what can use the GPU")
    d.add_argument("--json", action="store_true")
    _hw_opt(d)
    d.set_defaults(func=cmd_doctor)

    m = sub.add_parser("models", help="models with the engine and fit on this computer")
    m.add_argument("--json", action="store_true")
    m.add_argument("--fits", action="store_true", help="only models that can run here")
    m.add_argument("--refresh", action="store_true",
                   help="list the catalog's files and sizes on the Hub again (saved; used offline) and "
                        "say which entries changed")
    _hw_opt(m)
    m.set_defaults(func=cmd_models)

    _launch_parsers(sub)

    dg = sub.add_parser("diagnose", help="explain an engine log's failure, with fixes (Ember's or any other)")
    dg.add_argument("logfile", help="the log file (an Ember engine log, or one saved from elsewhere); - for stdin")
    dg.add_argument("--engine", choices=ENGINES, help="the engine that wrote it (default: read from the log)")
    dg.add_argument("--json", action="store_true", help="print kind, title, explanation, facts and fixes as JSON")
    dg.set_defaults(func=cmd_diagnose)

    st = sub.add_parser("settings", help="show or change Ember's settings (the desktop's Settings, in settings.json)")
    st.add_argument("key", nargs="?", help="one setting, e.g. stall_timeout_seconds")
    st.add_argument("value", nargs="?", help="its new value, as JSON (600, true, \"text\") or text")
    st.set_defaults(func=cmd_settings)

    pa = sub.add_parser("params", help="list an engine's parameters")
    pa.add_argument("--engine", choices=ENGINES, default="llamacpp")
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(func=cmd_params)

    pl = sub.add_parser("pull", help="download a model (resumes; Ctrl-C pauses)")
    pl.add_argument("model", help="a catalog name from `ember models`, or OWNER/REPO:FILE.gguf")
    pl.add_argument("--json", action="store_true", help="print a failure as JSON")
    pl.add_argument("--again", action="store_true", help="delete the downloaded files first (a broken model)")
    pl.set_defaults(func=cmd_pull)

    ep = sub.add_parser("engine-python", help="show or set the Python environment that runs an engine")
    ep.add_argument("engine", choices=[e for e in ENGINES if e != "llamacpp"])
    ep.add_argument("python", nargs="?", help="path to that environment's python (e.g. ~/vllm-env/bin/python)")
    ep.add_argument("--reset", action="store_true", help="back to Ember's own environment")
    ep.set_defaults(func=cmd_engine_python)

    _remote_parser(sub)
    _cluster_parser(sub)
    sub.add_parser("gui", help="start the desktop app (the default when `ember` has no arguments)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["engine-worker"]:  # the frozen app re-invokes itself for the engine child
        return worker.main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # a prompt after --set options: argparse leaves it over
        if getattr(args, "command", None) == "chat" and not any(e.startswith("-") for e in extra):
            args.prompt = list(args.prompt or []) + extra
        else:
            parser.error("unrecognized arguments: " + " ".join(extra))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not getattr(args, "func", None):  # `ember gui` / no command: desktop.launcher starts the app first
        parser.print_help()
        print("\nThe desktop app starts with `ember` alone (or `python -m desktop.launcher`).")
        return 0
    try:
        store.clean_stale_partials()  # a crash or a full disk may have left half a starter behind
    except OSError as exc:
        log.info("cannot clean stale partial files: %s", exc)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except paths.NoSpace as exc:
        return _fail(exc.message)
    except (store.ModelError, P.ParamError, launch.PlanError, ValueError) as exc:
        return _explain(exc, args)
    except OSError as exc:
        if paths.is_no_space(exc):
            folder = Path(exc.filename).parent if exc.filename else paths.data_dir()
            return _fail(paths.no_space(exc, folder, "what Ember was writing").message)
        return _unexpected(exc, args)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a sentence, not a traceback
        return _unexpected(exc, args)


if __name__ == "__main__":
    sys.exit(main())
