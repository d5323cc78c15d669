"""Which model the chat talks to, and starting one without blocking the window.

The picker lists running, idle-unloaded and remote models, and says which ones
only continue text (no chat template: :mod:`engines.chat.completion_mode`); the
note row (:mod:`.rows`) says it again under the picker while such a model is
chosen. The offer row starts a model in one click when none runs; the busy row
shows an engine start with a Cancel. Every start runs through :func:`desktop.bridge.run_async`.
An engine that fails or stops (the manager's events, through the bridge) leaves
the picker at once: it never says a dead model is ready.
"""
from __future__ import annotations

import logging
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QComboBox

from engines import actions, settings
from engines.chat.completion_mode import Mode, ModeDecision, mode_of
from engines.machine.gguf_info import GGUFError
from engines.models import store
from engines.running import launch
from engines.chat.endpoint import Endpoint
from engines.running.manager import EngineManager, Running
from engines.running.supervisor import EngineExited

from ..bridge import ManagerBridge, run_async
from .rows import COMPLETION_MARK, BusyRow, CompletionNote, OfferRow

log = logging.getLogger(__name__)


class EngineControl(QObject):
    """The model picker, the offer row and the busy row, and the engine starts behind them.

    The window lays out :attr:`combo`, :attr:`offer` and :attr:`busy` and listens to the
    signals; it never reaches into the launches.
    """

    changed = Signal()                  # the list or the busy state changed: buttons to update
    busy_changed = Signal(bool)
    status = Signal(str)                # a line for the status bar
    launch_failed = Signal(object, str)  # exception, model name (a cancelled start is not a failure)
    model_ready = Signal(str)           # a model the manager reports ready
    models_requested = Signal()

    def __init__(self, manager: EngineManager, bridge: ManagerBridge, parent: QObject | None = None):
        super().__init__(parent)
        self.manager = manager
        self.plans: dict[str, launch.LaunchPlan] = {}  # model name -> last plan seen (also failed ones)
        self._busy_name: str | None = None
        self._busy_cancelled = False
        self._remote_endpoints: list[Endpoint] = []
        self._remotes_call = None
        self.combo = QComboBox()
        self.combo.setAccessibleName("Model")
        self.combo.setMinimumContentsLength(24)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)  # the whole note shows
        self.combo.setPlaceholderText("No model running")
        self.offer = OfferRow()
        self.offer.action_clicked.connect(lambda: self.launch_model(self.offered_model()))
        self.offer.second_clicked.connect(self.models_requested)
        self.busy = BusyRow()
        self.busy.cancel_clicked.connect(self.cancel)
        self.note = CompletionNote()
        self.note.action_clicked.connect(self.models_requested)
        self.modes: dict[str, ModeDecision] = {}   # model name -> chat or completion, read from its files
        self._mode_files: dict[str, str | None] = {}  # model name -> the file or folder its mode was read from
        self._modes_pending: set[str] = set()
        bridge.failed.connect(self._engine_failed)
        bridge.stopped.connect(self._engine_stopped)
        bridge.changed.connect(self.refresh)
        bridge.loading.connect(lambda name, plan: self.plans.__setitem__(name, plan))
        bridge.ready.connect(self._engine_ready)

    # -- the picker -------------------------------------------------------------------
    @property
    def loading(self) -> bool:
        return self._busy_name is not None

    def offered_model(self) -> str:
        """The model the 'no model' row offers: the last one used, else the starter."""
        return str(settings.get("last_model") or store.STARTER)

    def local_endpoints(self) -> list[Endpoint]:
        """Running and idle-unloaded local models: read from the manager, no I/O."""
        eps = [r.endpoint for r in self.manager.running()]
        eps += [Endpoint(n, "", None, "unloaded", None, p.engine) for n, p in self.manager.unloaded().items()]
        return eps

    def refresh_remotes(self) -> None:
        """Ask for the full list (remote servers answer over the network) off the GUI thread."""
        if self._remotes_call is not None:
            return

        def got(endpoints):
            self._remotes_call = None
            self._remote_endpoints = [e for e in endpoints if e.kind == "remote"]
            self.refresh()

        def failed(exc):
            self._remotes_call = None
            log.info("listing endpoints failed: %s", exc)

        self._remotes_call = run_async(self.manager.endpoints, got, failed, name="list-endpoints")

    def refresh(self) -> None:
        """List the models again, keeping the selection."""
        current = self.current_model_name()
        local = self.local_endpoints()
        self.combo.blockSignals(True)
        self.combo.clear()
        for ep in local + self._remote_endpoints:
            self.combo.addItem(self.label(ep), ep)
            mode = self.modes.get(ep.name)
            self.combo.setItemData(self.combo.count() - 1, mode.reason if mode else None,
                                   Qt.ItemDataRole.ToolTipRole)
        if not (current and self.select_model(current)) and self.combo.count():
            self.combo.setCurrentIndex(0)  # with a placeholder set, Qt selects nothing by itself
        self.combo.blockSignals(False)
        self.offer.offer(self.offered_model())
        self._learn_modes(local)
        self.changed.emit()

    def label(self, ep: Endpoint) -> str:
        """The picker's line for a model: its name, its state, and whether it only continues text."""
        label = ep.name
        if ep.kind == "unloaded":
            label += " (unloaded while idle)"
        elif ep.kind == "remote":
            label += " (remote)"
        elif not self.alive(ep.name):
            label += " (stopped)"
        mode = self.modes.get(ep.name)
        if mode is not None and mode.mode is Mode.COMPLETION:
            label += COMPLETION_MARK
        return label

    def update_offer(self) -> None:
        """The offer row shows while no model is chosen and none is starting; the note while the
        chosen model only continues text."""
        ep = self.current_endpoint()
        self.offer.setVisible(ep is None and not self.loading)
        mode = self.modes.get(ep.name) if ep is not None else None
        if mode is not None and mode.mode is Mode.COMPLETION:
            self.note.describe(ep.name)
            self.note.show()
        else:
            self.note.hide()

    # -- chat or completion -------------------------------------------------------------
    def spec_of(self, ep: Endpoint) -> store.ModelSpec | None:
        """The model files behind a local endpoint (running or idle-unloaded); None for a remote one."""
        if ep.kind == "remote":
            return None
        run = self.manager.get(ep.name)
        plan = run.plan if run else self.manager.unloaded().get(ep.name) or self.plans.get(ep.name)
        return plan.model if plan else None

    def mode(self, ep: Endpoint) -> ModeDecision:
        """Chat or completion for this endpoint (a remote server's template is its own business: chat).

        Usually known already (read off the GUI thread when the model was listed); else read now
        (a GGUF header read, cached per file)."""
        known = self.modes.get(ep.name)
        if known is not None:
            return known
        spec = self.spec_of(ep)
        if spec is None:
            return ModeDecision(Mode.CHAT, "a remote server uses its own template")
        self._learned(ep.name, spec, _decide(spec))
        return self.modes[ep.name]

    def _learned(self, name: str, spec: store.ModelSpec, decision: ModeDecision) -> None:
        self.modes[name] = decision
        self._mode_files[name] = spec.path

    def _learn_modes(self, endpoints: list[Endpoint]) -> None:
        """Read the mode of newly listed local models off the GUI thread, then label them."""
        for ep in endpoints:
            spec = self.spec_of(ep)
            if spec is None or ep.name in self.modes or ep.name in self._modes_pending:
                continue
            self._modes_pending.add(ep.name)

            def learned(decision: ModeDecision, name: str = ep.name, spec: store.ModelSpec = spec) -> None:
                self._modes_pending.discard(name)
                self._learned(name, spec, decision)
                self.refresh()

            def failed(exc: BaseException, name: str = ep.name) -> None:
                self._modes_pending.discard(name)
                log.warning("cannot tell whether %s has a chat template: %s", name, exc)

            run_async(lambda spec=spec: _decide(spec), learned, failed, name=f"mode-{ep.name}", owner=self)

    def current_endpoint(self) -> Endpoint | None:
        ep = self.combo.currentData()
        return ep if isinstance(ep, Endpoint) else None

    def current_model_name(self) -> str | None:
        ep = self.current_endpoint()
        return ep.name if ep else None

    def select_model(self, name: str) -> bool:
        for i in range(self.combo.count()):
            ep = self.combo.itemData(i)
            if isinstance(ep, Endpoint) and ep.name == name:
                self.combo.setCurrentIndex(i)
                return True
        return False

    def alive(self, name: str) -> bool:
        """Whether the manager runs ``name`` and its process is up."""
        run = self.manager.get(name)
        return run is not None and run.proc.running

    def _engine_ready(self, name: str, run: Running) -> None:
        self.plans[name] = run.plan
        if self._mode_files.get(name, run.plan.model.path) != run.plan.model.path:
            self.modes.pop(name, None)  # the name now runs another file: read its mode again
        self.refresh()
        self.model_ready.emit(name)

    def _engine_failed(self, name: str, exc: Exception) -> None:
        """A model the picker listed as running failed (its engine crashed or was killed)."""
        listed = [self.combo.itemData(i) for i in range(self.combo.count())]
        # a crash is said even when a refresh already took the model off the list (a race under load)
        if isinstance(exc, EngineExited) or any(
                isinstance(ep, Endpoint) and ep.name == name and ep.kind == "local" for ep in listed):
            log.info("%s stopped unexpectedly: %s", name, exc)
            self.status.emit(f"{name} stopped unexpectedly. Your next message starts it again.")
        self.refresh()

    def _engine_stopped(self, name: str, reason: str) -> None:
        if name == self.current_model_name() and reason != "quit":
            self.status.emit(f"{name} was stopped.")
        self.refresh()

    # -- starting engines -------------------------------------------------------------
    def launch_model(self, name: str, then: Callable[[], None] | None = None) -> None:
        """Start a model by name as the gateway would (saved preferences, else Ember's default
        context); ``then()`` once ready."""

        def work():
            plan = launch.default_plan(name)
            self.plans[plan.model.name] = plan
            return self.manager.launch(plan)

        self.run_busy(f"Starting {name}…", name, work, then)

    def start_launch(self, plan: launch.LaunchPlan, then: Callable[[], None] | None = None) -> None:
        """Start this plan (from the models window, say); ``then()`` once ready."""
        name = plan.model.name
        self.plans[name] = plan
        self.run_busy(f"Starting {name}…", name, lambda: self.manager.launch(plan), then)

    def relaunch(self, plan: launch.LaunchPlan, changes: dict, then: Callable[[], None] | None = None) -> None:
        """Start ``plan`` again with changed parameters (a fix); ``then()`` once ready."""
        step = actions.Step(actions.Action.CHANGE if changes else actions.Action.RELAUNCH, changes=dict(changes))
        self.relaunch_step(step, plan, plan.model.name, then)

    def relaunch_step(self, step: actions.Step, plan: launch.LaunchPlan | None, model: str,
                      then: Callable[[], None] | None = None) -> None:
        """Start ``model`` again as a fix says (its changes, said by role; another engine; the same settings),
        off the GUI thread with the busy row; what the fix changed is kept as the model's choices once the
        engine is up, so its next start uses it. ``plan``: the launch that failed (None when its start was
        refused before a plan existed). ``then()`` once ready."""
        engine = plan.engine if plan is not None else None

        def work():
            new_plan = actions.relaunch_plan(step, plan, model)
            self.plans[new_plan.model.name] = new_plan
            run = self.manager.launch(new_plan)
            try:
                actions.remember(step, new_plan, plan)
            except OSError as exc:  # the engine runs; only the choice is not kept
                log.warning("could not remember the fix for %s: %s", model, exc)
            return run

        self.run_busy(f"Restarting {model} {actions.describe(step, engine)}…", model, work, then)

    def wake(self, name: str, then: Callable[[], None] | None = None) -> None:
        """Start an idle-unloaded (or exited) model again with its last plan; ``then()`` once ready."""
        self.run_busy(f"Starting {name} again…", name, lambda: self.manager.ensure_running(name), then)

    def run_busy(self, text: str, name: str, work: Callable[[], Running],
                 then: Callable[[], None] | None = None) -> None:
        """Run ``work`` (an engine start) off the GUI thread with the busy row shown."""
        self._busy_name = name
        self._busy_cancelled = False
        self.busy.label.setText(text)
        self.busy.show()
        self.status.emit(text)
        self.changed.emit()
        self.busy_changed.emit(True)

        def done(run: Running):
            self._end_busy()
            self.select_model(run.plan.model.name)
            self.status.emit(f"{run.plan.model.name} is ready")
            if then is not None:
                then()

        def failed(exc: BaseException):
            cancelled = self._busy_cancelled
            self._end_busy()
            if cancelled:
                self.status.emit("Cancelled")
                return
            self.launch_failed.emit(exc, name)

        run_async(work, done, failed, name=f"launch-{name}")

    def cancel(self) -> None:
        """Cancel the engine start that is running, if any."""
        if self._busy_name:
            self._busy_cancelled = True
            self.status.emit(f"Cancelling the start of {self._busy_name}…")
            for name in self.manager.loading():  # the name may be the resolved one
                self.manager.cancel_loading(name)

    def _end_busy(self) -> None:
        self._busy_name = None
        self.busy.hide()
        self.changed.emit()
        self.busy_changed.emit(False)


def _decide(spec: store.ModelSpec) -> ModeDecision:
    """The mode from the model's files; an unreadable file is left to the engine to report (chat)."""
    try:
        return mode_of(spec)
    except (GGUFError, OSError) as exc:
        return ModeDecision(Mode.CHAT, f"its files could not be read ({exc})")
