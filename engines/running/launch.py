"""From "run this model" to a ready engine: plan (pure, shown before launch), then start.

The CLI and the desktop both call :func:`plan` and :func:`start`, so what the
launch dialog shows is exactly what the command line does. Engines are reached
through their interface only (:func:`engines.running.backends.get`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from engines import model_prefs, settings, units
from engines.machine import hardware
from engines.machine.fit import FitEstimate
from engines.machine.hardware import HardwareProfile
from engines.models import lookup, store
from engines.models.store import ModelSpec
from engines.running import backends, selection, supervisor
from engines.running.backends import LABELS, availability, installed_engines

log = logging.getLogger(__name__)


class PlanError(RuntimeError):
    """No engine can run this model here; carries the reasons and the install command."""

    def __init__(self, model: str, reasons: dict[str, str], engine: str | None = None,
                 install_command: str | None = None):
        self.model, self.reasons, self.engine, self.install_command = model, reasons, engine, install_command
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.engine and self.install_command:
            return (f"{self.model} needs the {LABELS[self.engine]} engine, which is not installed. "
                    f"Install it with: {self.install_command}")
        why = "\n".join(f"  - {LABELS[e]}: {r}" for e, r in self.reasons.items())
        return f"No engine can run {self.model} on this computer:\n{why}"


@dataclass
class LaunchPlan:
    model: ModelSpec
    engine: str
    params: dict[str, object]             # what the engine gets (user values + Ember defaults)
    user_params: dict[str, object]        # what the user set
    hardware: HardwareProfile
    selection: selection.Selection
    fit: FitEstimate | None = None
    warnings: list[str] = field(default_factory=list)

    def with_changes(self, changes: dict[str, object]) -> "LaunchPlan":
        """The same launch with some parameters changed (a diagnosis fix); role names ("context") are said
        in the engine's keys (:attr:`Engine.roles`)."""
        user = dict(self.user_params)
        user.update(backends.get(self.engine).roles.to_keys(changes))
        return plan(self.model, self.hardware, self.engine, user)

    def with_engine(self, engine: str) -> "LaunchPlan":
        """The same model on another engine (a diagnosis fix): what plays a role here (the context, the
        parallel slots) carries over in the other engine's keys; the rest is this engine's own."""
        return plan(self.model, self.hardware, engine, self.carried_to(engine))

    def carried_to(self, engine: str) -> dict[str, object]:
        """This plan's user values that another ``engine`` takes over, in its keys."""
        roles = backends.get(self.engine).roles.to_roles(self.user_params)
        roles.pop("gpu_layers", None)  # each engine places its layers its own way
        return backends.get(engine).roles.to_keys(roles)


def plan(model: ModelSpec | str, hw: HardwareProfile | None = None, engine: str | None = None,
         overrides: dict[str, object] | list[str] | None = None, context: int | None = None) -> LaunchPlan:
    """Choose the engine, validate parameters, estimate GPU layers. Raises PlanError / ParamError.

    ``context``: a context size in tokens for whichever engine is chosen (its own key, see
    :attr:`Engine.roles`), for callers that do not know the engine yet; ``overrides`` win."""
    spec = lookup.resolve(model) if isinstance(model, str) else model
    hw = hw or hardware.detect()
    sel = selection.select(spec, hw, engine, installed_engines())
    if sel.engine is None:
        if engine and engine in sel.eligible or (not engine and sel.eligible):
            wanted = engine or sel.eligible[0]
            raise PlanError(spec.name, sel.reasons, wanted, availability(wanted).install_command)
        raise PlanError(spec.name, sel.reasons)
    if not spec.is_local:
        raise store.ModelError(spec.name, "is not downloaded yet; get it with: ember pull " + spec.name,
                                "not_downloaded")
    chosen = backends.get(sel.engine)
    user = chosen.validate(overrides or {})
    if context is not None:
        user = {**chosen.validate(chosen.context_override(context)), **user}
    values, estimate, warnings = chosen.prepare(spec, hw, user)
    if sel.warning:
        warnings.insert(0, sel.warning)
    return LaunchPlan(spec, sel.engine, values, user, hw, sel, estimate, warnings)


def default_plan(name: str, hw: HardwareProfile | None = None) -> LaunchPlan:
    """The plan for "start this model" with no dialog in between (the chat window's one click, the
    gateway's on-demand load): the model's saved preferences (engine, parameters) if any, else
    Ember's default context (``default_n_ctx``), never past what the model was trained for."""
    spec = lookup.resolve(name)
    prefs = model_prefs.load(spec.name)
    n_ctx = int(settings.get("default_n_ctx") or units.DEFAULT_N_CTX)
    ctx = min(n_ctx, spec.context_length) if spec.context_length else n_ctx
    if prefs is None:
        return plan(spec, hw, context=ctx)
    return plan(spec, hw, prefs.engine, prefs.overrides(), context=ctx)


def start(p: LaunchPlan, timeout: float = 300.0, cancel: threading.Event | None = None,
          host: str = "127.0.0.1", port: int | None = None) -> supervisor.EngineProcess:
    """Spawn the engine of a plan and wait until it answers. Raises EngineStartError.

    ``port`` forces a port (tests of the "port in use" diagnosis); normally a free one is picked."""
    chosen = backends.get(p.engine)
    api_key = supervisor.new_api_key()
    port = port or supervisor.free_port(host)
    cmd = chosen.command(p.model, p.params, host, port, api_key)
    proc = supervisor.EngineProcess(cmd, p.model.name, p.engine, host, port, api_key,
                                    supervisor.launch_log_path(p.model.name, p.engine),
                                    meta={"params": p.params})
    proc.spawn()
    proc.wait_ready(timeout=timeout, cancel=cancel)
    report = chosen.loaded(proc.log_lines())  # what the engine says it did (layers, buffers, effective context)
    if report is not None:
        proc.meta["loaded"] = report
    return proc


def context_override(engine: str, tokens: int) -> dict[str, object]:
    """The parameter change that sets ``engine``'s context to ``tokens``, in its own key ({} if it has none)."""
    return backends.get(engine).context_override(tokens)
