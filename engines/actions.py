"""What each fix of a diagnosis does, in the desktop and at a terminal alike.

A :class:`~engines.diagnosis.types.Fix` names its action as text: ``"relaunch"``,
``"use_engine:vllm"``, ``"edit_parameters:sampling.top_k"`` (an argument after the colon),
or none: then its parameter changes relaunch the engine, and with no changes either it is
advice the user follows outside Ember ("Update the NVIDIA driver"). :func:`step` reads
that into a :class:`Step` of the :class:`Action` vocabulary and refuses a name it does not
know (:class:`UnknownAction`), so no diagnosis can offer a button that does nothing.

The desktop gives every action a window or a visible change (``desktop/chat/fixes.py``);
the command line prints under each fix the command that does the same (:func:`cli_line`,
:func:`render_text`), for the :class:`Situation` the failure happened in. A fix that
relaunches is planned here (:func:`relaunch_plan`: the plan's parameters changed, or the
same model on another engine, the context carried over by role), and what it changed is
kept as the model's choices (:func:`remember`), so the next start uses it.
"""
from __future__ import annotations

import enum
import logging
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Mapping

from engines import model_prefs, settings
from engines.cluster import store as cluster_store
from engines.diagnosis.types import Diagnosis, Fix
from engines.models import downloads
from engines.running import backends, install, launch
from engines.running.backends import LABELS
from engines.running.backends.base import ROLE_WORDS, Roles

log = logging.getLogger(__name__)


class Action(str, enum.Enum):
    RELAUNCH = "relaunch"                  # the same launch again (and resend the message)
    CHANGE = "change"                      # (implicit) parameter changes: relaunch with them
    USE_ENGINE = "use_engine"              # the same model on another engine (argument: the engine)
    RETRY = "retry"                        # send the request again
    INSTALL = "install"                    # install what an engine needs (the note is the command)
    DOWNLOAD = "download"                  # download the model
    REDOWNLOAD = "redownload"              # delete the model's files and download them again
    EDIT_ENDPOINT = "edit_endpoint"        # a remote server's address or API key
    EDIT_PARAMETERS = "edit_parameters"    # the launch dialog, at a key (argument: the key)
    SHOW_LOG = "show_log"                  # the engine's log
    CHOOSE_MODEL = "choose_model"          # the models window
    NEW_CONVERSATION = "new_conversation"  # a new conversation, the last message kept to send
    EDIT_MESSAGE = "edit_message"          # the last message back in the input
    SETTINGS = "settings"                  # one of Ember's settings (argument: its key; else the note names it)
    EDIT_CLUSTER = "edit_cluster"          # an Xinference cluster's address and login (argument: the cluster)
    LAUNCH_ON_CLUSTER = "launch_on_cluster"  # launch the model on the cluster (argument: the cluster)
    ADVICE = "advice"                      # (implicit) nothing Ember can do: the note says what to do

    def __str__(self) -> str:
        return self.value


#: The actions a fix names itself (the other two follow from its changes).
NAMED = tuple(a for a in Action if a not in (Action.CHANGE, Action.ADVICE))
#: Actions that start the engine again.
RELAUNCHES = (Action.RELAUNCH, Action.CHANGE, Action.USE_ENGINE)
_ARGUMENT = {Action.USE_ENGINE: "an engine", Action.EDIT_PARAMETERS: "a parameter", Action.SETTINGS: "a setting",
             Action.EDIT_CLUSTER: "a cluster", Action.LAUNCH_ON_CLUSTER: "a cluster"}


class UnknownAction(ValueError):
    """A fix names an action Ember has no handler for."""

    def __init__(self, action: str, problem: str):
        self.action, self.problem = action, problem
        super().__init__(f"fix action {action!r}: {problem}")


@dataclass(frozen=True)
class Step:
    """A fix, read: what it does, with what."""

    action: Action
    argument: str | None = None              # the engine of use_engine, the key of edit_parameters
    changes: Mapping[str, object] = field(default_factory=dict)
    label: str = ""
    note: str = ""

    @property
    def relaunches(self) -> bool:
        return self.action in RELAUNCHES


def step(fix: Fix) -> Step:
    """The :class:`Step` a fix asks for; :class:`UnknownAction` for a name without a handler."""
    raw = fix.action
    if raw is None:
        action, argument = (Action.CHANGE if fix.changes else Action.ADVICE), None
    else:
        name, _, argument = str(raw).partition(":")
        try:
            action = Action(name)
        except ValueError:
            raise UnknownAction(raw, "no such action; Ember's are " + ", ".join(a.value for a in NAMED)) from None
        if action not in NAMED:
            raise UnknownAction(raw, "follows from the fix's changes; a fix does not name it")
        argument = argument or None
        if action is Action.USE_ENGINE and argument not in backends.ENGINES:
            raise UnknownAction(raw, f"needs {_ARGUMENT[action]}: one of {', '.join(backends.ENGINES)}")
        if action is Action.SETTINGS and argument and argument not in settings.DEFAULTS:
            raise UnknownAction(raw, f"{argument} is not one of Ember's settings")
        if action not in _ARGUMENT and argument:
            raise UnknownAction(raw, "takes no argument")
    return Step(action, argument, dict(fix.changes), fix.label, fix.note)


def parameter_key(s: Step, d: Diagnosis | None = None) -> str | None:
    """The parameter an "edit parameters" fix is about: its argument, else the suggestion its label names
    ("Use sampling.top_k"), else the key the diagnosis refused."""
    if s.argument:
        return s.argument
    facts = d.facts if d is not None else {}
    for suggestion in facts.get("suggestions") or []:
        if s.label == f"Use {suggestion}":
            return str(suggestion)
    key = facts.get("key") or facts.get("parameter")
    return str(key) if key else None


def setting_key(s: Step) -> str | None:
    """The setting a "settings" fix is about: its argument, else the one its words name."""
    if s.argument:
        return s.argument
    words = f"{s.label} {s.note}"
    return next((k for k in settings.DEFAULTS if re.search(rf"\b{re.escape(k)}\b", words)), None)


def cluster_of(s: Step, d: Diagnosis | None = None) -> str | None:
    """The cluster a cluster fix is about: its argument, else the diagnosis' ``cluster`` fact."""
    if s.argument:
        return s.argument
    cluster = d.facts.get("cluster") if d is not None else None
    return str(cluster) if cluster else None


def model_of(where: "Situation", d: Diagnosis | None = None) -> str | None:
    """The model a fix is about: the situation's, else the diagnosis' (a cluster's ``uid``, a ``model``)."""
    facts = d.facts if d is not None else {}
    return where.model or _text(facts.get("model")) or _text(facts.get("uid"))


def suggested_setting(key: str | None, d: Diagnosis | None = None) -> object | None:
    """A value to offer for ``key``: twice what the diagnosis says it was (a timeout that was too short)."""
    now = (d.facts.get("timeout") if d is not None else None) or settings.get(key) if key else None
    return int(float(now) * 2) if isinstance(now, (int, float)) and not isinstance(now, bool) else None


# -- the situation, and the command line -----------------------------------------------------------

@dataclass(frozen=True)
class Situation:
    """Where a failure happened, as far as a fix's command needs it."""

    model: str | None = None                 # the model, as ``ember chat`` takes it
    engine: str | None = None                # the engine that ran (or would run) it
    params: Mapping[str, object] = field(default_factory=dict)   # the user's values (``--set``)
    engine_chosen: bool = False              # the command named the engine (``--engine``)
    log_path: str | None = None
    remote: str | None = None                # a remote server's name
    remote_url: str | None = None
    command: str = "chat"                    # the ``ember`` command: chat | serve

    @classmethod
    def of_plan(cls, plan, log_path: str | None = None, command: str = "chat",
                engine_chosen: bool = False) -> "Situation":
        return cls(plan.model.name, plan.engine, dict(plan.user_params), engine_chosen, log_path, command=command)

    def with_diagnosis(self, d: Diagnosis) -> "Situation":
        """Filled in from the diagnosis where this one knows less (its log, its model, its engine)."""
        model = self.model or _text(d.facts.get("model"))
        engine = self.engine or _text(d.facts.get("engine"))
        return Situation(model, engine if engine in backends.ENGINES else None, self.params, self.engine_chosen,
                         self.log_path or d.log_path, self.remote, self.remote_url, self.command)


@dataclass(frozen=True)
class CliLine:
    """What to do at a terminal: a command to run, or words where there is none."""

    text: str
    command: bool = True


def ember(*words: str) -> str:
    return shlex.join(["ember", *words])


def _launch_command(where: Situation, params: Mapping[str, object], engine: str | None = None) -> str:
    words = [where.command if where.command in ("chat", "serve") else "chat", where.model or "MODEL"]
    engine = engine or (where.engine if where.engine_chosen else None)
    if engine:
        words += ["--engine", engine]
    for k, v in params.items():
        words += ["--set", f"{k}={_value(v)}"]
    return ember(*words)


def cli_line(fix: Fix, where: Situation, d: Diagnosis | None = None) -> CliLine:
    """The command that does at a terminal what the fix's button does in the desktop (``d``: the
    diagnosis the fix belongs to, for the parameter it is about)."""
    s = step(fix)
    a = s.action
    engine = backends.get(where.engine) if where.engine in backends.ENGINES else None
    if a in (Action.RELAUNCH, Action.CHANGE):
        changes = engine.roles.to_keys(s.changes) if engine is not None else dict(s.changes)
        return CliLine(_launch_command(where, {**where.params, **changes}))
    if a is Action.USE_ENGINE:
        carried = {}
        if engine is not None:
            roles = engine.roles.to_roles(where.params)
            roles.pop("gpu_layers", None)
            carried = backends.get(s.argument).roles.to_keys(roles)
        return CliLine(_launch_command(where, carried, s.argument))
    if a is Action.RETRY:
        if where.remote:
            return CliLine(ember("remote", "chat", where.remote, "MESSAGE"))
        return CliLine(_launch_command(where, where.params))
    if a is Action.INSTALL:
        cmd = install.command_for(s.note, where.engine)
        return CliLine(cmd.display, True)
    if a is Action.DOWNLOAD:
        return CliLine(ember("pull", where.model or "MODEL"))
    if a is Action.REDOWNLOAD:
        if where.model and downloadable(where.model):
            return CliLine(ember("pull", where.model, "--again"))
        return CliLine("Download the file again from where it came, or pick another model file.", False)
    if a is Action.EDIT_ENDPOINT:
        return CliLine(ember("remote", "add", where.remote or "NAME", where.remote_url or "URL", "--key-stdin"))
    if a is Action.EDIT_PARAMETERS:
        key = parameter_key(s, d) or "KEY"
        listing = ember("params", "--engine", where.engine) if where.engine else ember("params")
        return CliLine(f"{_launch_command(where, {**where.params, key: 'VALUE'})}   ({listing} lists them)")
    if a is Action.SHOW_LOG:
        if not where.log_path:
            return CliLine("The engine logs are in Ember's log folder (`ember doctor` shows where).", False)
        return CliLine(("type " if os.name == "nt" else "tail -n 50 ") + shlex.quote(where.log_path))
    if a is Action.CHOOSE_MODEL:
        return CliLine(ember("models", "--fits"))
    if a is Action.NEW_CONVERSATION:
        return CliLine(_launch_command(where, where.params))
    if a is Action.SETTINGS:
        key = setting_key(s)
        value = suggested_setting(key, d)
        return CliLine(ember("settings", key or "KEY", str(value) if value is not None else "VALUE"))
    if a is Action.EDIT_CLUSTER:
        cluster = cluster_of(s, d)
        url = _cluster_url(cluster)
        return CliLine(ember("cluster", "add", cluster or "NAME", url or "URL", "--user", "USER", "--password-env",
                             "VARIABLE"))
    if a is Action.LAUNCH_ON_CLUSTER:
        return CliLine(ember("cluster", "launch", cluster_of(s, d) or "CLUSTER", model_of(where, d) or "MODEL"))
    if a is Action.EDIT_MESSAGE:
        return CliLine("Send the message again, shorter or with the image as PNG or JPEG.", False)
    return CliLine(s.note or s.label, False)  # advice


def downloadable(model: str) -> bool:
    """Whether ``model`` is one Ember downloads (a catalog model, or OWNER/REPO:FILE from the Hub), so it can
    be downloaded again."""
    try:
        downloads.target(model)
    except downloads.DownloadError:
        return False
    return True


def render_text(d: Diagnosis, where: Situation | None = None, tail: int = 10) -> str:
    """The diagnosis for a terminal: its words, each fix with the command that does it, the log."""
    where = (where or Situation()).with_diagnosis(d)
    out = [f"Error: {d.title}", "", _indent(d.explanation, "  ")]
    if d.fixes:
        out += ["", "What you can do:"]
        for i, f in enumerate(d.fixes, 1):
            out.append(f"  {i}. {f.label}")
            if f.note:
                out.append(_indent(f.note, "     "))
            try:
                line = cli_line(f, where, d)
            except UnknownAction as exc:  # a diagnosis must still be shown whole
                log.warning("%s", exc)
                continue
            if line.command:
                out.append(f"     $ {line.text}")
            elif line.text not in (f.note, f.label):
                out.append(_indent(line.text, "     "))
    if d.log_path:
        out += ["", f"Engine log: {d.log_path}"]
    if d.log_tail and tail:
        out += ["  last lines:"] + ["    " + l for l in d.log_tail[-tail:]]
    return "\n".join(out)


def to_dict(d: Diagnosis, where: Situation | None = None) -> dict:
    """:meth:`Diagnosis.to_dict` with each fix's ``action`` read and its ``cli`` line."""
    where = (where or Situation()).with_diagnosis(d)
    out = d.to_dict()
    for f, entry in zip(d.fixes, out["fixes"]):
        try:
            line = cli_line(f, where, d)
            entry.update(step=step(f).action.value, cli=line.text, cli_is_command=line.command)
        except UnknownAction as exc:
            log.warning("%s", exc)
    return out


# -- relaunching -------------------------------------------------------------------------------------

def describe(s: Step, engine: str | None) -> str:
    """What a relaunch changes, in words: ``with context 8,192 tokens``, ``with Transformers``."""
    if s.action is Action.USE_ENGINE:
        return f"with {LABELS.get(s.argument, s.argument)}"
    if not s.changes:
        return "with the same settings"
    roles = backends.get(engine).roles if engine in backends.ENGINES else Roles()
    return "with " + roles.describe(s.changes)


def change_words(changes: Mapping[str, object], engine: str | None) -> str:
    """A fix's change for the line under its note: by role where one plays one, then the engine's keys
    (``context 8,192 tokens · max_model_len = 8192``)."""
    roles = backends.get(engine).roles if engine in backends.ENGINES else Roles()
    keys = ", ".join(f"{k} = {v}" for k, v in roles.to_keys(changes).items())
    by_role = {k: v for k, v in changes.items() if k in ROLE_WORDS or roles.role_of(k)}
    if not by_role:
        return keys
    return f"{roles.describe(by_role)} \u00b7 {keys}" if keys else roles.describe(by_role)


def relaunch_plan(s: Step, plan: launch.LaunchPlan | None, model: str | None) -> launch.LaunchPlan:
    """The launch a relaunching step asks for. Blocking (a plan reads the model's header): call it off
    the GUI thread. Without a plan (its start was refused before one existed, by the model's saved
    choices say), the change goes into those choices and the model's start is planned afresh."""
    if not s.relaunches:
        raise ValueError(f"{s.action} does not relaunch")
    if plan is None:
        if not model:
            raise ValueError("there is no launch to fix")
        if s.action is Action.USE_ENGINE:
            return launch.plan(model, engine=s.argument)
        prefs = model_prefs.load(model)
        if s.changes and prefs is not None and prefs.engine:
            model_prefs.remember(model, prefs.engine, backends.get(prefs.engine).roles.to_keys(s.changes))
        return launch.default_plan(model)
    if s.action is Action.USE_ENGINE:
        return plan.with_engine(s.argument)
    return plan.with_changes(dict(s.changes)) if s.changes else plan


def remember(s: Step, new: launch.LaunchPlan, old: launch.LaunchPlan | None) -> None:
    """Keep what a fix changed as the model's choices (after its relaunch succeeded), so the next start
    (``launch.default_plan``) and the launch dialog use it; a relaunch with the same settings keeps nothing."""
    engine = backends.get(new.engine)
    if s.action is Action.USE_ENGINE or (old is not None and old.engine != new.engine):
        model_prefs.remember(new.model.name, new.engine, {}, carried=dict(new.user_params))
    elif s.changes:
        changes = engine.roles.to_keys(s.changes)
        manual_layers = False if engine.roles.gpu_layers in changes else None
        model_prefs.remember(new.model.name, new.engine, changes, auto_gpu_layers=manual_layers)


def _cluster_url(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return cluster_store.get(name).url
    except cluster_store.ClusterConfigError:
        return None


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _text(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + l if l else l for l in text.splitlines())


__all__ = ["Action", "CliLine", "NAMED", "RELAUNCHES", "Situation", "Step", "UnknownAction", "cli_line", "change_words", "cluster_of", "describe", "downloadable", "model_of", "parameter_key", "relaunch_plan", "setting_key", "suggested_setting", "remember", "render_text", "step", "to_dict"]
