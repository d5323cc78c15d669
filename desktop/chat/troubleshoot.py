"""What the chat shows when something goes wrong, and the fixes it offers.

A failed start or reply opens the guided :class:`DiagnosisDialog` (or, when the
failure is not recognised, a message with the engine's log); a reply that finished
but was cut short gets a banner above the transcript with a "How to fix…". The
status line says what failed in one sentence (:func:`failure_sentence`, the
diagnosis title); the engine's raw words are only under Details.

The diagnosis itself runs off the GUI thread (:func:`desktop.bridge.run_async`): it
reads the engine's log, may wait for the process to exit and may read the model's
header for its memory numbers. The troubleshooter remembers what failed (the plan,
the model, the endpoint), which the fixes (:mod:`.fixes`) then act on.
"""
from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

from typing import Callable

from engines import actions, paths
from engines.chat.client import Finished
from engines.chat.endpoint import Endpoint
from engines.chat.stop_reason import from_error
from engines.diagnosis import diagnose
from engines.running.launch import LaunchPlan
from engines.running.manager import EngineManager

from ..bridge import run_async
from ..diagnosis_dialog import DiagnosisDialog
from ..log_viewer import LogViewer
from .notice import NoticeRow

log = logging.getLogger(__name__)


class FinishBanner(NoticeRow):
    """A finished reply that the diagnosis flags: what happened, How to fix… (the action), Dismiss."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("", "How to fix…", "Dismiss", parent)
        self.label.setWordWrap(True)
        self.second_clicked.connect(self.hide)
        self.hide()


class Troubleshooter(QObject):
    """Diagnoses failures and shows them over ``window``; remembers the plan a fix would change.

    ``plans`` is the engine control's record of the last plan per model (also failed
    launches, which the manager no longer holds).
    """

    shown = Signal(object)        # the dialog or message box shown for a failure
    fix_chosen = Signal(dict)     # the dialog's: a relaunch with these changes (also in fix_action)
    fix_action = Signal(object)   # the diagnose.Fix the user clicked, with the diagnosis in .diagnosis

    def __init__(self, manager: EngineManager, plans: dict[str, LaunchPlan], window: QWidget):
        super().__init__(window)
        self.manager = manager
        self.plans = plans
        self.window = window
        self.failed_plan: LaunchPlan | None = None     # what a relaunching fix changes
        self.failed_model: str | None = None           # the model that failed (also without a plan)
        self.failed_endpoint: Endpoint | None = None   # the endpoint a failed reply went to
        self.diagnosis: diagnose.Diagnosis | None = None   # the last one shown
        self._finish_diagnosis: diagnose.Diagnosis | None = None
        self.banner = FinishBanner()
        self.banner.action_clicked.connect(self._open_finish_diagnosis)

    def _remember(self, name: str | None, endpoint: Endpoint | None):
        """What failed: the plan a fix would change, the model, the endpoint; returns the running engine."""
        run = self.manager.get(name) if name else None
        self.failed_plan = run.plan if run else self.plans.get(name) if name else None
        self.failed_model = self.failed_plan.model.name if self.failed_plan is not None else name
        self.failed_endpoint = endpoint
        return run

    def diagnose(self, exc: BaseException, name: str | None = None,
                 endpoint: Endpoint | None = None) -> diagnose.Diagnosis | None:
        """The diagnosis of a failure of ``name`` (None when it is not recognised), blocking: for the
        command line and tests; the window uses :meth:`diagnose_async`."""
        run = self._remember(name, endpoint)
        return _diagnosis(exc, run, self.failed_plan)

    def diagnose_async(self, exc: BaseException, name: str | None, endpoint: Endpoint | None,
                       then: Callable[[diagnose.Diagnosis | None], None]) -> None:
        """Diagnose off the GUI thread (the log is read, the process waited for); ``then(diagnosis)`` on it."""
        run, plan = self._remember(name, endpoint), self.failed_plan
        run_async(lambda: _diagnosis(exc, run, plan), then, lambda e: then(None), name="diagnose", owner=self)

    def situation(self) -> actions.Situation:
        """The failure as a fix's terminal command needs it."""
        ep, plan = self.failed_endpoint, self.failed_plan
        if ep is not None and ep.kind == "remote":
            return actions.Situation(remote=ep.name.split("/", 1)[0], remote_url=ep.base_url)
        if plan is not None:
            return actions.Situation.of_plan(plan, engine_chosen=True)
        return actions.Situation(self.failed_model)

    def show_failure(self, exc: BaseException, name: str | None = None,
                     diagnosis: diagnose.Diagnosis | None = None) -> QWidget:
        """The guided diagnosis dialog if the failure is recognised, else a message with the log."""
        diagnosis = diagnosis or self.diagnose(exc, name)
        if diagnosis is not None:
            return self._open_dialog(diagnosis)
        run = self.manager.get(name) if name else None
        return self._message_box(exc, run.proc if run else None)

    def show_diagnosis(self, diagnosis: diagnose.Diagnosis, name: str | None = None,
                       endpoint: Endpoint | None = None) -> DiagnosisDialog:
        """Show a diagnosis already made, for a failure of ``name`` (through ``endpoint``): the fixes act on it."""
        self._remember(name, endpoint)
        return self._open_dialog(diagnosis)

    def check_finish(self, fin: Finished, plan: LaunchPlan | None) -> None:
        """Show the banner if a finished reply was cut short (or otherwise flagged); the check runs off the
        GUI thread (its fixes may read the model's header)."""
        self._finish_diagnosis = None

        def judged(d: diagnose.Diagnosis | None) -> None:
            if d is None:
                return
            self._finish_diagnosis = d
            self.failed_plan = plan
            self.failed_model = plan.model.name if plan is not None else None
            self.banner.label.setText(d.title or "The reply was cut short.")
            self.banner.show()

        run_async(lambda: _finish_diagnosis(fin, plan), judged, name="diagnose-finish", owner=self)

    def show_log(self, path: Path | str) -> None:
        viewer = LogViewer(path, self.window)
        viewer.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        viewer.show()

    def _message_box(self, exc: BaseException, proc) -> QMessageBox:
        text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        log_path = getattr(exc, "log_path", None) or (proc.log_path if proc else None)
        box = QMessageBox(QMessageBox.Icon.Warning, "Ember", text, QMessageBox.StandardButton.Close, self.window)
        box.setInformativeText(f"The engine's log: {log_path or paths.log_dir()}")
        tail = getattr(exc, "log_tail", None)
        if tail:
            box.setDetailedText("\n".join(tail))
        if log_path:
            view = box.addButton("View log", QMessageBox.ButtonRole.ActionRole)
            view.clicked.connect(lambda: self.show_log(log_path))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self.shown.emit(box)
        return box

    def _open_dialog(self, diagnosis: diagnose.Diagnosis) -> DiagnosisDialog:
        self.diagnosis = diagnosis
        dialog = DiagnosisDialog(diagnosis, self.window, self.situation())
        dialog.fix_chosen.connect(self.fix_chosen)
        dialog.fix_action.connect(self.fix_action)
        dialog.open()
        self.shown.emit(dialog)
        return dialog

    def _open_finish_diagnosis(self) -> None:
        if self._finish_diagnosis is not None:
            self._open_dialog(self._finish_diagnosis)


def _diagnosis(exc: BaseException, run, plan: LaunchPlan | None) -> diagnose.Diagnosis | None:
    try:
        return diagnose.diagnose_exception(exc, proc=run.proc if run else None, plan=plan)
    except Exception:  # a bug in the diagnosis must not hide the failure itself
        log.exception("diagnosis failed for %r", exc)
        return None


def _finish_diagnosis(fin: Finished, plan: LaunchPlan | None) -> diagnose.Diagnosis | None:
    try:
        return diagnose.diagnose_finish(fin, plan)
    except Exception:
        log.exception("diagnosis of a finished reply failed")
        return None


def failure_sentence(exc: BaseException, diagnosis: diagnose.Diagnosis | None, starting: str | None = None) -> str:
    """The status line for a failure: the diagnosis title, never the engine's raw text.

    ``starting``: the model whose start failed (a reply failure otherwise)."""
    if diagnosis is not None and diagnosis.title:
        return diagnosis.title.rstrip(".")
    if starting:
        return f"{starting} could not be started"
    return from_error(exc).sentence()
