"""What a fix's button does in the chat window: one handler per action of :mod:`engines.actions`.

The core reads a fix into a :class:`~engines.actions.Step` (an unknown action is refused
there); each handler here makes the step happen where the user sees it:

- relaunch, parameter changes, another engine: the busy row says "Restarting … with
  context 8,192 tokens…", the engine starts again off the GUI thread, what changed is kept
  as the model's choices, and the last message is sent again;
- retry: the last message is sent again;
- install: the command for the engine's interpreter, with Copy and Install (:mod:`..install_dialog`);
- download, download again: the download starts in the models window's downloads panel
  (:attr:`ChatWindow.download_requested`, which the app connects);
- edit the endpoint: the remote server's address and key (:mod:`..endpoint_dialog`);
- edit parameters: the launch dialog, at the parameter the fix is about;
- show the log, choose a model, a new conversation, edit the message;
- a setting: the Settings dialog at it, a value offered (:attr:`ChatWindow.setting_requested`, the app's);
- a cluster: its address and login to edit, or the model launched there (the models window's cluster panel,
  :attr:`ChatWindow.cluster_launch_requested`, the app's);
- advice (no action, no change): said in the status line (the dialog shows it as words).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

from engines import actions
from engines.actions import Action, Step
from engines.diagnosis.types import Fix
from engines.machine import hardware
from engines.models import downloads, lookup
from engines.running import install

from ..bridge import run_async
from ..cluster_dialog import AddClusterDialog
from ..endpoint_dialog import EndpointDialog
from ..install_dialog import InstallDialog
from ..launch_dialog import LaunchDialog

if TYPE_CHECKING:  # the window owns this object; only its public face is used
    from ..chat_window import ChatWindow

log = logging.getLogger(__name__)


class FixActions(QObject):
    """Carries out the fix the user picked, for the failure the troubleshooter remembers."""

    opened = Signal(QWidget)   # a window a fix opened (install, endpoint, launch dialog, log, message)
    done = Signal(object)      # the Step, once its handler ran (its effect may still be under way)

    def __init__(self, window: "ChatWindow"):
        super().__init__(window)
        self.window = window
        self.handlers: dict[Action, Callable[[Step], None]] = {
            Action.RELAUNCH: self._relaunch, Action.CHANGE: self._relaunch, Action.USE_ENGINE: self._relaunch,
            Action.RETRY: self._retry, Action.INSTALL: self._install, Action.DOWNLOAD: self._download,
            Action.REDOWNLOAD: self._redownload, Action.EDIT_ENDPOINT: self._edit_endpoint,
            Action.EDIT_PARAMETERS: self._edit_parameters, Action.SHOW_LOG: self._show_log,
            Action.CHOOSE_MODEL: self._choose_model, Action.NEW_CONVERSATION: self._new_conversation,
            Action.EDIT_MESSAGE: self._edit_message, Action.SETTINGS: self._settings, Action.ADVICE: self._advice,
            Action.EDIT_CLUSTER: self._edit_cluster, Action.LAUNCH_ON_CLUSTER: self._launch_on_cluster,
        }

    @property
    def ts(self):
        return self.window.troubleshooter

    def run(self, fix: Fix) -> None:
        """Do what ``fix`` says (an unknown action is said in the status line, never silently dropped)."""
        try:
            step = actions.step(fix)
        except actions.UnknownAction as exc:
            log.warning("%s", exc)
            self._say(f"Ember cannot do “{fix.label}” by itself: {exc.problem}.")
            return
        log.info("fix: %s (%s)", fix.label, step.action)
        self.handlers[step.action](step)
        self.done.emit(step)

    # -- helpers --------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        self.window.status.setText(text)

    def _show(self, widget: QWidget) -> QWidget:
        widget.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        widget.show()
        widget.raise_()
        widget.activateWindow()
        self.opened.emit(widget)
        return widget

    def _model(self) -> str | None:
        plan = self.ts.failed_plan
        if plan is not None:
            return plan.model.name
        d = self.ts.diagnosis
        return self.ts.failed_model or (str(d.facts["model"]) if d is not None and d.facts.get("model") else None)

    def _engine(self) -> str | None:
        plan = self.ts.failed_plan
        d = self.ts.diagnosis
        return plan.engine if plan is not None else (str(d.facts["engine"]) if d is not None and
                                                    d.facts.get("engine") else None)

    # -- the handlers ---------------------------------------------------------------------------
    def _relaunch(self, step: Step) -> None:
        plan = self.ts.failed_plan
        if plan is None:
            run = self.window.manager.get(self.window.current_model_name() or "")
            plan = run.plan if run else None
        model = plan.model.name if plan is not None else self._model()
        if model is None:
            self._say("There is no launch to fix.")
            return
        self.window.engine.relaunch_step(step, plan, model, then=self.window.resend_after_fix)

    def _retry(self, step: Step) -> None:
        if any(m.role == "user" for m in self.window.history):
            self.window.resend_last()
        else:
            self._say("There is no message to send again.")

    def _install(self, step: Step) -> None:
        cmd = install.command_for(step.note, self._engine())
        dialog = InstallDialog(cmd, step.label, "", self.window)
        dialog.start_requested.connect(lambda: self._relaunch(Step(Action.RELAUNCH)))
        self._show(dialog)

    def _download(self, step: Step) -> None:
        name = self._model()
        if name is None:
            self._choose_model(step)
            return
        self.window.download_requested.emit(name)
        self._say(f"Downloading {name}: the Models window shows how far it is.")

    def _redownload(self, step: Step) -> None:
        name = self._model()
        if name is None or not actions.downloadable(name):
            box = QMessageBox(QMessageBox.Icon.Information, "Ember: download again",
                              f"{name or 'This model'} was not downloaded by Ember, so Ember cannot download it "
                              "again. Get the file again from where it came, or choose another model.",
                              QMessageBox.StandardButton.Close, self.window)
            choose = box.addButton("Choose another model", QMessageBox.ButtonRole.ActionRole)
            choose.clicked.connect(self.window.models_requested)
            self._show(box)
            return
        self._say(f"Deleting {name}'s files to download them again…")
        run_async(lambda: downloads.delete(name), lambda _freed: self._download(step),
                  lambda exc: self._say(f"{name}'s files could not be deleted: {exc}"), name="redownload",
                  owner=self)

    def _edit_endpoint(self, step: Step) -> None:
        ep = self.ts.failed_endpoint
        remote = ep.name.split("/", 1)[0] if ep is not None and ep.kind == "remote" else None
        d = self.ts.diagnosis
        dialog = EndpointDialog(remote, self.window, d.title if d is not None else "")
        dialog.saved.connect(lambda _name: self.window.engine.refresh_remotes())
        self._show(dialog)

    def _edit_parameters(self, step: Step) -> None:
        d = self.ts.diagnosis
        key = actions.parameter_key(step, d)
        replacing = str(d.facts["key"]) if d is not None and d.facts.get("key") and d.facts["key"] != key else None
        plan = self.ts.failed_plan
        if plan is not None:
            self._open_launch_dialog(plan.model, plan.hardware, key, replacing)
            return
        model = self._model()
        if model is None:
            self._choose_model(step)
            return
        self._say(f"Opening {model}'s settings…")
        run_async(lambda: (lookup.resolve(model), hardware.detect()),
                  lambda found: self._open_launch_dialog(found[0], found[1], key, replacing),
                  lambda exc: self._say(f"{model}'s settings cannot be opened: {getattr(exc, 'problem', exc)}"),
                  name="edit-parameters", owner=self)

    def _open_launch_dialog(self, spec, hw, key: str | None, replacing: str | None) -> LaunchDialog:
        dialog = LaunchDialog(spec, hw, self.window)
        dialog.accepted.connect(lambda: dialog.plan() is not None and self.window.start_launch(
            dialog.plan(), then=self.window.resend_after_fix))
        self._show(dialog)
        dialog.focus_key(key, replacing)
        return dialog

    def _show_log(self, step: Step) -> None:
        d = self.ts.diagnosis
        path = d.log_path if d is not None and d.log_path else None
        if path is None:
            plan = self.ts.failed_plan
            run = self.window.manager.get(plan.model.name) if plan is not None else None
            path = str(run.proc.log_path) if run is not None else None
        if path is None:
            self.window.logs_requested.emit()
            return
        self.window.show_log(path)

    def _choose_model(self, step: Step) -> None:
        self.window.models_requested.emit()

    def _new_conversation(self, step: Step) -> None:
        last_user = self._last_user_text()
        self.window.new_chat()
        self.window.composer.set_text(last_user)  # nothing the user wrote is lost

    def _edit_message(self, step: Step) -> None:
        self.window.composer.set_text(self._last_user_text())
        self.window.composer.focus()

    def _settings(self, step: Step) -> None:
        key = actions.setting_key(step)
        self.window.setting_requested.emit(key or "", actions.suggested_setting(key, self.ts.diagnosis))

    def _edit_cluster(self, step: Step) -> None:
        cluster = actions.cluster_of(step, self.ts.diagnosis)
        dialog = AddClusterDialog(self.window)
        if cluster:
            dialog.fill(cluster)
        dialog.added.connect(lambda _added: self.window.engine.refresh_remotes())
        self._show(dialog)

    def _launch_on_cluster(self, step: Step) -> None:
        d = self.ts.diagnosis
        cluster = actions.cluster_of(step, d)
        model = actions.model_of(self.ts.situation(), d)
        if not cluster or not model:
            self._choose_model(step)
            return
        self.window.cluster_launch_requested.emit(cluster, model)
        self._say(f"Launching {model} on {cluster}: the Models window shows how far it is.")

    def _advice(self, step: Step) -> None:
        self._say(f"{step.label}: {step.note}" if step.note else step.label)

    def _last_user_text(self) -> str:
        return next((m.content for m in reversed(self.window.history) if m.role == "user"), "")
