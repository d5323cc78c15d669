"""Which model the chat talks to, and starting one without blocking the window.

The picker lists running, idle-unloaded and remote models; the offer row starts a
model in one click when none runs; the busy row shows an engine start with a
Cancel. Every start runs through :func:`desktop.bridge.run_async`.
"""
from __future__ import annotations

import logging
from typing import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QComboBox, QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from engines import settings, units
from engines.models import lookup, store
from engines.running import launch
from engines.chat.endpoint import Endpoint
from engines.running.manager import EngineManager, Running

from ..bridge import ManagerBridge, run_async
from .notice import NoticeRow

log = logging.getLogger(__name__)


class OfferRow(NoticeRow):
    """'No model is running': start the offered one in one click (the action), or browse the models."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("No model is running.", "Start the starter model", "Models…", parent)

    def offer(self, name: str) -> None:
        label = "the starter model" if name == store.STARTER else name
        self.button.setText(f"Start {label}")
        self.label.setText(f"No model is running. Start {label} in one click, or choose another in Models.")


class BusyRow(QFrame):
    """An engine starting: what is happening, an endless progress bar, Cancel."""

    cancel_clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        self.label = QLabel()
        row.addWidget(self.label)
        bar = QProgressBar(minimum=0, maximum=0)
        bar.setMaximumWidth(160)
        bar.setAccessibleName("Loading")
        row.addWidget(bar)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_clicked)
        row.addWidget(self.cancel_button)
        self.hide()


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
        self.combo.setPlaceholderText("No model running")
        self.offer = OfferRow()
        self.offer.action_clicked.connect(lambda: self.launch_model(self.offered_model()))
        self.offer.second_clicked.connect(self.models_requested)
        self.busy = BusyRow()
        self.busy.cancel_clicked.connect(self.cancel)
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
        self.combo.blockSignals(True)
        self.combo.clear()
        for ep in self.local_endpoints() + self._remote_endpoints:
            label = ep.name
            if ep.kind == "unloaded":
                label += " (unloaded while idle)"
            elif ep.kind == "remote":
                label += " (remote)"
            self.combo.addItem(label, ep)
        if not (current and self.select_model(current)) and self.combo.count():
            self.combo.setCurrentIndex(0)  # with a placeholder set, Qt selects nothing by itself
        self.combo.blockSignals(False)
        self.offer.offer(self.offered_model())
        self.changed.emit()

    def update_offer(self) -> None:
        """The offer row shows while no model is chosen and none is starting."""
        self.offer.setVisible(self.current_endpoint() is None and not self.loading)

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
        self.refresh()
        self.model_ready.emit(name)

    # -- starting engines -------------------------------------------------------------
    def launch_model(self, name: str, then: Callable[[], None] | None = None) -> None:
        """Start a model by name with Ember's default context; ``then()`` once ready."""
        n_ctx = int(settings.get("default_n_ctx") or units.DEFAULT_N_CTX)

        def work():
            spec = lookup.resolve(name)
            ctx = min(n_ctx, spec.context_length) if spec.context_length else n_ctx
            plan = launch.plan(spec, context=ctx)  # the chosen engine's own context key
            self.plans[spec.name] = plan
            return self.manager.launch(plan)

        self.run_busy(f"Starting {name}…", name, work, then)

    def start_launch(self, plan: launch.LaunchPlan, then: Callable[[], None] | None = None) -> None:
        """Start this plan (from the models window, say); ``then()`` once ready."""
        name = plan.model.name
        self.plans[name] = plan
        self.run_busy(f"Starting {name}…", name, lambda: self.manager.launch(plan), then)

    def relaunch(self, plan: launch.LaunchPlan, changes: dict, then: Callable[[], None] | None = None) -> None:
        """Start ``plan`` again with changed parameters (a fix); ``then()`` once ready."""
        name = plan.model.name
        changes = dict(changes)

        def work():
            new_plan = plan.with_changes(changes)
            self.plans[name] = new_plan
            return self.manager.launch(new_plan)

        self.run_busy(f"Restarting {name} with {', '.join(f'{k}={v}' for k, v in changes.items())}…",
                      name, work, then)

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
