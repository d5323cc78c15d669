"""The models window's clusters: each Xinference cluster the user added as another place to run.

For each cluster: what it is (version, workers), the models running there with Stop,
Ember's models it can launch (with their fit on the cluster's largest worker, or
"Fit unknown") and its built-in names, each with Launch; a launch shows the
cluster's progress with Cancel, and a failure opens the diagnosis dialog, whose fixes
relaunch on the cluster (with a fix's changes), launch again, or edit the cluster. Everything comes from :mod:`engines.cluster.ops`, off the
GUI thread.
"""
from __future__ import annotations

import logging
import threading

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (QComboBox, QFrame, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from engines import actions
from engines.cluster import diagnosis as cluster_diagnosis
from engines.cluster import ops, store
from engines.cluster.launching import ClusterPlan
from engines.cluster.xinference import ClusterError
from engines.diagnosis.types import Diagnosis

from .bridge import LaunchProgress, run_async
from .cluster_dialog import AddClusterDialog
from .diagnosis_dialog import DiagnosisDialog
from .widgets import FitBadge, error_label, muted_label, primary_button, text_label

log = logging.getLogger(__name__)


class ClusterPanel(QFrame):
    """One cluster: its facts, running models (Stop), what it can launch (Launch), a launch's progress."""

    changed = Signal()                     # a launch or stop finished: the overview was read again
    diagnosis_shown = Signal(Diagnosis)    # a failure was explained (the dialog is open)

    def __init__(self, name: str, parent: QWidget | None = None, overview: ops.Overview | None = None):
        """``overview``: shown as it is instead of asking the cluster (what a test or a caller already read)."""
        super().__init__(parent)
        self.name = name
        self.overview: ops.Overview | None = None
        self.plan: ClusterPlan | None = None
        self.dialog: DiagnosisDialog | None = None
        self._cancel: threading.Event | None = None
        self.setFrameShape(QFrame.StyledPanel)
        self.setObjectName("clusterPanel")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 10, 12, 10)
        head = QHBoxLayout()
        self.title = QLabel(name)
        f = self.title.font()
        f.setBold(True)
        self.title.setFont(f)
        self.summary = muted_label(wrap=False)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setAccessibleName(f"Refresh cluster {name}")
        self.refresh_button.clicked.connect(self.refresh)
        head.addWidget(self.title)
        head.addWidget(self.summary, 1)
        head.addWidget(self.refresh_button)
        layout.addLayout(head)
        self.devices = muted_label()
        layout.addWidget(self.devices)
        self.error = error_label()
        layout.addWidget(self.error)
        self.grid = QGridLayout()
        self.grid.setHorizontalSpacing(12)
        layout.addLayout(self.grid)
        layout.addLayout(self._options_row())
        layout.addLayout(self._progress_row())
        self.relay = LaunchProgress(self)
        self.relay.changed.connect(self._progress)
        if overview is not None:
            self.show_overview(overview)
        else:
            self.refresh()

    def _options_row(self) -> QHBoxLayout:
        """What every Launch here asks for: the context (in the chosen engine's own key), replicas,
        GPUs per replica and engine options, as Xinference's launch fields (issue 16.3)."""
        row = QHBoxLayout()
        row.addWidget(QLabel("Launch with"))
        self.context = QSpinBox(minimum=0, maximum=1 << 20, singleStep=1024, suffix=" tokens",
                                specialValueText="default context")
        self.context.setAccessibleName(f"Context for launches on {self.name}")
        self.replicas = QSpinBox(minimum=1, maximum=64, prefix="replicas ")
        self.replicas.setAccessibleName(f"Replicas for launches on {self.name}")
        self.gpus = QComboBox()
        self.gpus.addItems(["GPUs: auto", "GPUs: none", *[f"GPUs: {n}" for n in range(1, 9)]])
        self.gpus.setAccessibleName(f"GPUs per replica for launches on {self.name}")
        self.engine_options = QLineEdit()
        self.engine_options.setPlaceholderText("engine options: key=value, …")
        self.engine_options.setAccessibleName(f"Engine options for launches on {self.name}")
        for w in (self.context, self.replicas, self.gpus):
            row.addWidget(w)
        row.addWidget(self.engine_options, 1)
        return row

    def launch_options(self) -> dict:
        """The options row as :func:`engines.cluster.ops.plan`'s arguments."""
        gpus = self.gpus.currentIndex()
        return {"context": self.context.value() or None, "replicas": self.replicas.value(),
                "n_gpu": "auto" if gpus == 0 else gpus - 1,
                "overrides": [p.strip() for p in self.engine_options.text().split(",") if p.strip()]}

    def _progress_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setAccessibleName(f"Launch on {self.name}")
        self.progress_label = muted_label(wrap=False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_launch)
        for w in (self.progress, self.progress_label, self.cancel_button):
            row.addWidget(w)
            w.hide()
        return row

    # -- reading --------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.summary.setText("asking the cluster\u2026")
        run_async(lambda: ops.overview(self.name), self.show_overview, self._failed,
                  name=f"cluster-{self.name}", owner=self)

    def show_overview(self, ov: ops.Overview) -> None:
        self.overview = ov
        c = ov.cluster
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        if ov.error is not None:
            self.summary.setText(c.url)
            self.devices.setText("")
            self.error.setText(f"Not answering: {ov.error.message}")
            self.error.show()
            self.changed.emit()
            return
        self.error.hide()
        who = f"admin {c.user}" if c.can_admin else "API key: list and chat only"
        self.summary.setText(f"Xinference {ov.info.version or '(version not told)'} \u00b7 {c.url} \u00b7 {who}")
        self.devices.setText(ov.devices_line)
        row = 0
        row = self._heading("Running there", row)
        if not ov.running:
            self.grid.addWidget(muted_label("Nothing running"), row, 0, 1, 3)
            row += 1
        for m in ov.running:
            ctx = f" \u00b7 context {m.context_length:,}" if m.context_length else ""
            stop = QPushButton("Stop")
            stop.setAccessibleName(f"Stop {m.uid} on {self.name}")
            stop.setEnabled(c.can_admin)
            stop.clicked.connect(lambda _=False, uid=m.uid: self.stop(uid))
            self.grid.addWidget(QLabel(m.uid), row, 0)
            self.grid.addWidget(muted_label(f"{m.engine or '?'}{ctx}", wrap=False), row, 1)
            self.grid.addWidget(stop, row, 2)
            row += 1
        row = self._heading("Can launch there", row)
        if not ov.files_reachable:
            self.grid.addWidget(muted_label("Ember's models: the cluster runs on another computer and cannot read "
                                            "this one's files."), row, 0, 1, 3)
            row += 1
        for item in ov.launchable:
            badge = FitBadge({"fit": item.fit})
            badge.setToolTip(item.fit_words)
            self.grid.addWidget(QLabel(item.name), row, 0)
            line = QHBoxLayout()
            line.addWidget(badge)
            line.addWidget(muted_label(item.fit_words, wrap=False), 1)
            holder = QWidget()
            holder.setLayout(line)
            line.setContentsMargins(0, 0, 0, 0)
            self.grid.addWidget(holder, row, 1)
            self.grid.addWidget(self._launch_button(item.name, c.can_admin), row, 2)
            row += 1
        if ov.builtin:
            self.builtin = QComboBox()
            self.builtin.addItems(ov.builtin)
            self.builtin.setAccessibleName(f"Xinference built-in models on {self.name}")
            self.grid.addWidget(QLabel("Built-in model"), row, 0)
            self.grid.addWidget(self.builtin, row, 1)
            button = QPushButton("Launch")
            button.setAccessibleName(f"Launch the chosen built-in model on {self.name}")
            button.setEnabled(c.can_admin)
            button.clicked.connect(lambda: self.launch(self.builtin.currentText()))
            self.grid.addWidget(button, row, 2)
        self.grid.setColumnStretch(1, 1)
        self.changed.emit()

    def _heading(self, text: str, row: int) -> int:
        label = QLabel(text)
        f = label.font()
        f.setBold(True)
        label.setFont(f)
        self.grid.addWidget(label, row, 0, 1, 3)
        return row + 1

    def _launch_button(self, model: str, allowed: bool) -> QPushButton:
        button = primary_button("Launch")
        button.setAccessibleName(f"Launch {model} on {self.name}")
        button.setEnabled(allowed)
        if not allowed:
            button.setToolTip("Launching needs an admin login for this cluster (Settings, Clusters)")
        button.clicked.connect(lambda: self.launch(model))
        return button

    def _failed(self, exc: BaseException) -> None:
        self.error.setText(f"{self.name}: {getattr(exc, 'message', None) or exc}")
        self.error.show()

    # -- launching and stopping ------------------------------------------------------------------
    def launch(self, model: str, changes: dict | None = None) -> None:
        """Plan (Ember's engine and defaults, or the last plan with a fix's ``changes``) and launch, off the GUI."""
        self._cancel = threading.Event()
        cancel, relay, base = self._cancel, self.relay, self.plan if changes else None
        options = self.launch_options()
        self._show_progress(True, f"Launching {model}\u2026")

        def work():
            p = base.with_changes(changes) if base is not None else ops.plan(self.name, model, **options)
            self.plan = p
            return ops.launch(p, relay.report, cancel, replace=True)

        run_async(work, lambda _m: self._launched(), lambda exc: self._launch_failed(model, exc),
                  name=f"cluster-launch-{model}", owner=self)

    def cancel_launch(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.progress_label.setText("Cancelling\u2026")

    def stop(self, uid: str) -> None:
        self._show_progress(True, f"Stopping {uid}\u2026")
        run_async(lambda: ops.stop(self.name, uid), lambda _ok: self._launched(),
                  lambda exc: self._launch_failed(uid, exc), name=f"cluster-stop-{uid}", owner=self)

    def _progress(self, uid: str, fraction: float, stage: str) -> None:
        if fraction < 0:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 100)
            self.progress.setValue(int(fraction * 100))
        self.progress_label.setText(f"{uid}: {stage}")

    def _show_progress(self, on: bool, text: str = "") -> None:
        for w in (self.progress, self.progress_label, self.cancel_button):
            w.setVisible(on)
        if on:  # one launch or stop at a time; the refresh after it enables them again
            for b in self.findChildren(QPushButton):
                if b.accessibleName().startswith(("Launch", "Stop")):
                    b.setEnabled(False)
        self.progress.setRange(0, 0)
        self.progress_label.setText(text)

    def _launched(self) -> None:
        self._show_progress(False)
        self.refresh()

    def _launch_failed(self, model: str, exc: BaseException) -> None:
        self._show_progress(False)
        if isinstance(exc, (ClusterError, store.ClusterConfigError)):
            d = cluster_diagnosis.diagnose_cluster_error(exc, self.plan, self.name)
        else:
            d = cluster_diagnosis.diagnose_chat(exc, self.plan, None, cluster=self.name)
        if d is None:
            self._failed(exc)
            return
        self.dialog = DiagnosisDialog(d, self)
        self.dialog.fix_chosen.connect(lambda changes: self.launch(model, changes))
        self.dialog.fix_action.connect(lambda fix: self._fix(fix, model))
        self.dialog.open()
        self.diagnosis_shown.emit(d)
        self.refresh()


    def _fix(self, fix, model: str) -> None:
        """The dialog's fixes that are not a relaunch with changes (those arrive through fix_chosen)."""
        try:
            step = actions.step(fix)
        except actions.UnknownAction as exc:
            self._failed(exc)
            return
        if step.action in (actions.Action.RETRY, actions.Action.LAUNCH_ON_CLUSTER):
            self.launch(model)
        elif step.action is actions.Action.EDIT_CLUSTER:
            self.edit_dialog = AddClusterDialog(self)
            self.edit_dialog.fill(self.name)
            self.edit_dialog.added.connect(lambda _added: self.refresh())
            self.edit_dialog.open()


class ClustersView(QGroupBox):
    """Every cluster the user added, one panel each; a line saying how to add one when there is none."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Clusters (Xinference)", parent)
        self.panels: dict[str, ClusterPanel] = {}
        self.box = QVBoxLayout(self)
        self.empty = text_label("No cluster added. To run models on a team's GPU servers, add their Xinference "
                                "supervisor in Settings \u2192 Clusters (or `ember cluster add NAME URL`).")
        self.box.addWidget(self.empty)
        self.reload()

    def reload(self) -> None:
        """Re-read the list of clusters (after Settings added or removed one)."""
        names = [c.name for c in store.list_clusters()]
        for name in list(self.panels):
            if name not in names:
                self.panels.pop(name).deleteLater()
        for name in names:
            if name in self.panels:
                self.panels[name].refresh()
            else:
                self.panels[name] = ClusterPanel(name, self)
                self.box.addWidget(self.panels[name])
        self.empty.setVisible(not names)
