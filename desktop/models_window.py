"""The models window: "Recommended for this computer", this computer's hardware, every model with
whether it runs here and how fast, downloads, and launch.

All facts come from the core (``hardware.detect``, ``catalog.rows``,
``recommend.annotate``, ``store.add_local``, the download queue); this module
only lays them out. Detection, the model list, the Hub check and stopping an
engine run off the GUI thread so the window opens at once and never freezes.

For the app: ``ModelsWindow(manager, bridge=app_bridge)`` (engine events come
through :class:`desktop.bridge.ManagerBridge`; without one the window makes its
own); connect ``launch_requested`` (a :class:`engines.running.launch.LaunchPlan`)
to whatever starts it and opens the chat. "Download and chat" emits it too,
once the download is verified. The window has its own downloads panel
(:func:`desktop.downloads_view.attach`, over ``downloads=`` or a new
:class:`~engines.models.downloads.DownloadManager`); ``download_progress(name,
fraction)`` reports every download (fraction 0..1, -1.0 once it ended or
failed) for the tray. The filters (run here, sort, search) are remembered in
the settings.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QHideEvent
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFrame, QGridLayout, QGroupBox, QHBoxLayout,
                               QLabel, QLineEdit, QProgressBar, QPushButton, QScrollArea, QSizePolicy, QToolButton,
                               QVBoxLayout, QWidget)

from engines import settings, units
from engines.chat import completion_mode
from engines.machine import hardware as H
from engines.models import catalog, hub, listings, lookup, recommend, store
from engines.models import downloads as D
from engines.running import launch
from engines.running.backends import LABELS
from engines.running.launch import LaunchPlan
from engines.running.manager import EngineManager

from .bridge import ManagerBridge, run_async
from .clusters_view import ClustersView
from .downloads_view import attach as attach_downloads
from .downloads_view import display_name
from .launch_dialog import LaunchDialog
from .recommended_view import RecommendedView
from .widgets import FIT_ORDER, FitBadge, apply_style, muted_label, primary_button, text_label

log = logging.getLogger(__name__)

RUNS_HERE = ("gpu", "partial", "cpu")
BUILD_CHUNK = 12  # rows built per event-loop turn
SORTS = {"Best fit first": "fit", "Name": "name", "Size": "size"}
SAVE_FILTERS_MS = 400  # the search box is saved this long after the last key
ENDED = ("ready", "failed", "cancelled")
#: Changed catalog entries listed in the notice after a Refresh; the rest are counted.
MAX_CHANGE_LINES = 6


def load_rows(hw: H.HardwareProfile) -> tuple[list[dict], bool]:
    """Every model's row with the recommendation fields, and whether a chat model is already here.

    Runs off the GUI thread: the chat-template check reads each local GGUF's header.
    """
    rows = recommend.annotate(catalog.rows(hw), hw)
    specs = []
    for r in rows:
        if r.get("local"):
            try:
                specs.append(lookup.resolve(r["name"]))
            except store.ModelError as exc:
                log.info("%s is listed but cannot be read: %s", r["name"], exc.problem)
    return rows, completion_mode.has_chat_model(specs)


def download_fraction(job: D.Job) -> float:
    """What the tray shows for a download: 0..1 while it is under way or paused, -1.0 once it ended."""
    if job.state in ENDED:
        return -1.0
    return min(1.0, job.done_bytes / job.total_bytes) if job.total_bytes else 0.0


def _numbers_line(row: dict) -> str:
    """The technical line under the badge: the estimate's numbers and the file size."""
    reason = str(row.get("reason") or "")
    why_engine = (row.get("reasons") or {}).get(row.get("engine") or "", "")
    detail = reason[len(why_engine):].lstrip("; ") if why_engine and reason.startswith(why_engine) else ""
    if row.get("fit") == "partial" and not detail:
        detail = f"{row.get('gpu_layers')} of {row.get('total_layers')} layers on the GPU"
    size = ((f"{units.size(row['size_bytes'])} download" if row.get("size_exact")
             else f"about {units.size(row['size_bytes'])} download (estimated)") if row.get("size_bytes") else "")
    tps = row.get("expected_tokens_per_second")
    speed = f"about {tps:,.0f} tokens/s here (estimate)" if tps and row.get("fit") in RUNS_HERE else ""
    if row.get("engine") is None:
        detail = speed = ""
    return " \u00b7 ".join(x for x in (detail, speed, size) if x)


def _engine_line(row: dict) -> str:
    engine = row.get("engine")
    if engine is None:
        if row.get("install_command"):
            return f"Needs an engine that is not installed. Install it with: {row['install_command']}"
        return "No engine can run it on this computer (see why below)"
    why = (row.get("reasons") or {}).get(engine, "")
    return f"Runs with {LABELS.get(engine, engine)}" + (f": {why}" if why else "")


def _why_not_lines(row: dict) -> list[str]:
    engine = row.get("engine")
    return [f"{LABELS.get(e, e)}: {r}" for e, r in (row.get("reasons") or {}).items() if e != engine]


class ModelRow(QFrame):
    """One model: name, fit badge in words, numbers below, engine and why, actions."""

    launch_clicked = Signal(str)
    stop_clicked = Signal(str)
    remove_clicked = Signal(str)
    download_clicked = Signal(str)

    def __init__(self, row: dict, parent: QWidget | None = None):
        super().__init__(parent)
        self.row = row
        self.name = row["name"]
        self.state: str | None = None
        self.setFrameShape(QFrame.StyledPanel)
        self.setObjectName("modelRow")
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)
        grid = QGridLayout(self)
        grid.setContentsMargins(12, 10, 12, 10)
        grid.setHorizontalSpacing(12)
        grid.setVerticalSpacing(4)
        grid.addLayout(self._build_title(row), 0, 0)
        self._build_fit_lines(row, grid)
        self._build_why_not(row, grid)
        grid.addLayout(self._build_actions(), 0, 1, 6, 1)
        grid.setColumnStretch(0, 1)
        self._show_actions_for(row)

    def _build_title(self, row: dict) -> QHBoxLayout:
        """Name, the short facts (format, quantization, where it comes from), and the running mark."""
        line = QHBoxLayout()
        line.setSpacing(10)
        self.title = QLabel(row.get("display_name") or self.name)
        f = self.title.font()
        f.setBold(True)
        f.setPointSizeF(f.pointSizeF() * 1.1)
        self.title.setFont(f)
        self.title.setTextInteractionFlags(Qt.TextSelectableByMouse)
        facts = [row.get("format", "").upper(), row.get("quantization") or "",
                 {"starter": "comes with Ember", "local": "your file", "catalog": "catalog"}.get(row.get("source"), "")]
        if row.get("source") == "catalog" and not row.get("local"):
            facts[-1] = "not downloaded"
        self.facts = muted_label(" \u00b7 ".join(x for x in facts if x), wrap=False)
        line.addWidget(self.title)
        line.addWidget(self.facts)
        line.addStretch(1)
        self.running_label = QLabel()
        self.running_label.setProperty("ember", "running")
        self.running_label.hide()
        line.addWidget(self.running_label)
        return line

    def _build_fit_lines(self, row: dict, grid: QGridLayout) -> None:
        """The fit badge, its numbers, and which engine runs it (grid rows 1-3)."""
        badge_line = QHBoxLayout()
        self.badge = FitBadge(row)
        badge_line.addWidget(self.badge)
        badge_line.addStretch(1)
        grid.addLayout(badge_line, 1, 0)
        self.numbers = muted_label(_numbers_line(row))
        self.numbers.setAccessibleName("Fit details")
        grid.addWidget(self.numbers, 2, 0)
        self.engine_label = QLabel(_engine_line(row))
        self.engine_label.setWordWrap(True)
        self.engine_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        grid.addWidget(self.engine_label, 3, 0)

    def _build_why_not(self, row: dict, grid: QGridLayout) -> None:
        """Why the other engines cannot run it, folded away (grid rows 4-5, only when there is a why)."""
        why_not = _why_not_lines(row)
        self.why_toggle = QToolButton()
        self.why_toggle.setText("Why not the other engines")
        self.why_toggle.setCheckable(True)
        self.why_toggle.setAutoRaise(True)
        self.why_toggle.setArrowType(Qt.RightArrow)
        self.why_toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.why_label = muted_label("\n".join(f"\u2022 {line}" for line in why_not))
        self.why_label.hide()
        self.why_toggle.toggled.connect(self._toggle_why)
        if why_not:
            grid.addWidget(self.why_toggle, 4, 0, Qt.AlignLeft)
            grid.addWidget(self.why_label, 5, 0)

    def _build_actions(self) -> QVBoxLayout:
        actions = QVBoxLayout()
        actions.setSpacing(6)
        title = self.title.text()
        self.launch_button = primary_button("Launch\u2026")
        self.launch_button.setAccessibleName(f"Launch {title}")
        self.launch_button.clicked.connect(lambda: self.launch_clicked.emit(self.name))
        self.stop_button = QPushButton("Stop")
        self.stop_button.setAccessibleName(f"Stop {title}")
        self.stop_button.clicked.connect(lambda: self.stop_clicked.emit(self.name))
        self.stop_button.hide()
        self.download_button = QPushButton("Download\u2026")
        self.download_button.setAccessibleName(f"Download {title}")
        self.download_button.clicked.connect(lambda: self.download_clicked.emit(self.name))
        self.remove_button = QPushButton("Remove")
        self.remove_button.setAccessibleName(f"Remove {title} from the list")
        self.remove_button.setToolTip("Removes it from Ember's list; the file itself stays where it is")
        self.remove_button.clicked.connect(lambda: self.remove_clicked.emit(self.name))
        for b in (self.launch_button, self.stop_button, self.download_button, self.remove_button):
            actions.addWidget(b)
        actions.addStretch(1)
        return actions

    def _show_actions_for(self, row: dict) -> None:
        """Launch when it is here and runs, Download for a catalog model not yet here, Remove for user files."""
        runnable = row.get("engine") is not None and row.get("fit") != "none"
        downloaded = bool(row.get("local"))
        self.launch_button.setVisible(downloaded or row.get("source") != "catalog")
        self.launch_button.setEnabled(runnable and downloaded)
        if not runnable:
            self.launch_button.setToolTip("This model cannot run on this computer; see why below")
        self.download_button.setVisible(row.get("source") == "catalog" and not downloaded)
        self.remove_button.setVisible(row.get("source") == "local")

    def set_download(self, job: D.Job) -> None:
        """The Download button follows the model's download (the panel below has the details)."""
        percent = f"{100 * job.done_bytes / job.total_bytes:.0f}%" if job.total_bytes else ""
        text = {"queued": "Waiting\u2026", "downloading": f"Downloading\u2026 {percent}",
                "verifying": "Checking\u2026", "paused": f"Resume ({percent})" if percent else "Resume",
                "failed": "Try again"}.get(job.state, "Download\u2026")
        self.download_button.setText(text)
        self.download_button.setEnabled(job.state not in ("queued", "downloading", "verifying"))

    def _toggle_why(self, on: bool) -> None:
        self.why_toggle.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self.why_label.setVisible(on)

    def set_state(self, state: str | None) -> None:
        """None, "loading", "running" or "stopping"."""
        self.state = state
        text = {"loading": "Loading\u2026", "running": "\u25cf Running", "stopping": "Stopping\u2026"}.get(state or "")
        self.running_label.setText(text or "")
        self.running_label.setVisible(bool(text))
        self.stop_button.setVisible(state in ("running", "loading", "stopping"))
        self.stop_button.setEnabled(state in ("running", "loading"))
        self.stop_button.setText("Cancel" if state == "loading" else "Stop")


class ModelsWindow(QWidget):
    """Hardware summary, the model list with fit badges, and Launch."""

    launch_requested = Signal(LaunchPlan)  # the plan the launch dialog accepted
    download_requested = Signal(str)       # a catalog model's name (the downloads panel queues it)
    download_progress = Signal(str, float)  # model name, 0..1 (-1.0: the download ended or failed): the tray
    models_loaded = Signal()               # the list is on screen (tests and the app may wait for it)
    relisted = Signal(listings.RefreshResult)  # Refresh listed the catalog on the Hub: what changed, what failed

    def __init__(self, manager: EngineManager, parent: QWidget | None = None,
                 hardware: H.HardwareProfile | None = None, bridge: ManagerBridge | None = None,
                 downloads: D.DownloadManager | None = None):
        super().__init__(parent)
        self.manager = manager
        self.bridge = bridge or ManagerBridge(manager, self)
        self._injected_hw = hardware
        self.hw: H.HardwareProfile | None = hardware
        self.rows: list[dict] = []
        self.last_relist: listings.RefreshResult | None = None
        self._order: dict[str, int] = {}
        self._build_queue: list[dict] = []
        self._layout_order: list[str] = []
        self.row_widgets: dict[str, ModelRow] = {}
        self._loading = False
        self._again: str | None = None  # a refresh asked for while one was running
        self._chat_after: set[str] = set()  # downloads to launch (and chat with) once verified
        self._starting: str | None = None   # the model the "Starting it" notice is about
        self.has_chat = False
        self.setWindowTitle("Ember \u2014 Models")
        apply_style(self)
        self.resize(900, 800)

        root = QVBoxLayout(self)
        root.setSpacing(10)
        root.addWidget(self._build_notice())
        root.addWidget(self._build_page(), 1)
        self.downloads_slot = QVBoxLayout()  # the downloads panel goes here (see add_downloads_panel)
        root.addLayout(self.downloads_slot)

        self.setAcceptDrops(True)  # drop a .gguf file or a model folder to add it
        self.bridge.changed.connect(self._update_states)
        self.bridge.failed.connect(self._engine_failed)
        self.bridge.ready.connect(self._engine_ready)
        self.downloads_view = attach_downloads(self, downloads)
        self.downloads_view.bridge.download_changed.connect(self._download_changed)
        self.refresh()
        self.check_hub()

    # -- building ---------------------------------------------------------------------------
    def _build_recommended(self) -> RecommendedView:
        self.recommended = RecommendedView()
        self.recommended.download_and_chat.connect(self.download_and_chat)
        self.recommended.starter_requested.connect(lambda: self.launch_default(store.STARTER))
        self.recommended.recheck_requested.connect(self.check_hub)
        return self.recommended

    def _build_hardware_box(self) -> QGroupBox:
        """This computer: CPU, memory, GPUs, and why llama.cpp cannot use a GPU when it cannot."""
        self.hw_box = QGroupBox("This computer")
        hw_layout = QVBoxLayout(self.hw_box)
        hw_layout.setSpacing(3)
        self.hw_busy = QProgressBar()
        self.hw_busy.setRange(0, 0)
        self.hw_busy.setTextVisible(False)
        self.hw_busy.setMaximumHeight(8)
        self.hw_busy.setAccessibleName("Checking your hardware")
        self.hw_status = muted_label("Checking your hardware\u2026")
        self.cpu_label = QLabel()
        self.ram_label = QLabel()
        self.gpu_labels = QVBoxLayout()
        self.gpu_labels.setSpacing(3)
        self.gpu_note = QLabel()
        self.gpu_note.setWordWrap(True)
        self.gpu_note.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.gpu_note.hide()
        for w in (self.cpu_label, self.ram_label):
            w.setTextInteractionFlags(Qt.TextSelectableByMouse)
            w.setWordWrap(True)
        hw_layout.addWidget(self.hw_status)
        hw_layout.addWidget(self.hw_busy)
        hw_layout.addWidget(self.cpu_label)
        hw_layout.addWidget(self.ram_label)
        hw_layout.addLayout(self.gpu_labels)
        hw_layout.addWidget(self.gpu_note)
        return self.hw_box

    def _build_notice(self) -> QFrame:
        """One dismissable message: an added file, a refused file, a failed stop."""
        self.notice = QFrame()
        self.notice.setFrameShape(QFrame.StyledPanel)
        notice_line = QHBoxLayout(self.notice)
        notice_line.setContentsMargins(10, 6, 6, 6)
        self.notice_label = text_label()
        self.notice_close = QToolButton()
        self.notice_close.setText("\u2715")
        self.notice_close.setAccessibleName("Dismiss this message")
        self.notice_close.setToolTip("Dismiss")
        self.notice_close.clicked.connect(self.notice.hide)
        notice_line.addWidget(self.notice_label, 1)
        notice_line.addWidget(self.notice_close, 0, Qt.AlignTop)
        self.notice.hide()
        return self.notice

    def _build_actions(self) -> QHBoxLayout:
        """The heading with the count, Refresh and the two ways to add a model."""
        actions = QHBoxLayout()
        heading = QLabel("Models")
        f = heading.font()
        f.setBold(True)
        f.setPointSizeF(f.pointSizeF() * 1.15)
        heading.setFont(f)
        self.count_label = muted_label(wrap=False)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("List the catalog's files and sizes on the Hugging Face Hub again, "
                                       "check free memory again and re-read the model list")
        self.refresh_button.clicked.connect(self.relist)
        self.add_file_button = QPushButton("Add model file\u2026")
        self.add_file_button.setToolTip("Add a GGUF file you already have; it is checked first and never moved")
        self.add_file_button.clicked.connect(self.add_model_file)
        self.add_folder_button = QPushButton("Add model folder\u2026")
        self.add_folder_button.setToolTip("Add a Hugging Face model folder (config.json + safetensors)")
        self.add_folder_button.clicked.connect(self.add_model_folder)
        actions.addWidget(heading)
        actions.addSpacing(8)
        actions.addWidget(self.count_label)
        actions.addStretch(1)
        actions.addWidget(self.refresh_button)
        actions.addWidget(self.add_file_button)
        actions.addWidget(self.add_folder_button)
        return actions

    def _build_filters(self) -> QHBoxLayout:
        """Search, "only models that run here" and the sort order, as the user last left them."""
        bar = QHBoxLayout()
        saved = settings.load()
        self.search = QLineEdit(str(saved.get("models_search") or ""))
        self.search.setPlaceholderText("Search models by name or quantization")
        self.search.setAccessibleName("Search models")
        self.search.setClearButtonEnabled(True)
        self.search.setMinimumWidth(260)
        self.only_runnable = QCheckBox("Only models that run here")
        self.only_runnable.setChecked(bool(saved.get("models_only_runnable")))
        self.sort_combo = QComboBox()
        self.sort_combo.addItems(list(SORTS))
        self.sort_combo.setAccessibleName("Sort models by")
        self.sort_combo.setToolTip("Best fit first: the models that run here, the fastest on this computer first "
                                   "(an estimate from the model's size and this computer's memory speed)")
        modes = list(SORTS.values())
        self.sort_combo.setCurrentIndex(modes.index(saved.get("models_sort")) if saved.get("models_sort") in modes
                                        else 0)
        self._save_timer = QTimer(self, singleShot=True, interval=SAVE_FILTERS_MS)
        self._save_timer.timeout.connect(self.save_filters)
        self.search.textChanged.connect(lambda _t: (self._apply_view(False), self._save_timer.start()))
        self.only_runnable.toggled.connect(lambda _on: (self._apply_view(), self.save_filters()))
        self.sort_combo.currentIndexChanged.connect(lambda _i: (self._apply_view(), self.save_filters()))
        sort_label = QLabel("&Sort by")
        sort_label.setBuddy(self.sort_combo)
        bar.addWidget(self.search, 1)
        bar.addSpacing(12)
        bar.addWidget(self.only_runnable)
        bar.addSpacing(12)
        bar.addWidget(sort_label)
        bar.addWidget(self.sort_combo)
        return bar

    def _build_page(self) -> QScrollArea:
        """One scrolling page: the recommendations, this computer, then the model list with its filters."""
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 6, 0)
        layout.setSpacing(10)
        layout.addWidget(self._build_recommended())
        layout.addWidget(self._build_hardware_box())
        self.clusters = ClustersView()  # the other places to run: Xinference clusters the user added
        layout.addWidget(self.clusters)
        layout.addLayout(self._build_actions())
        layout.addLayout(self._build_filters())
        layout.addWidget(self._build_list(), 1)
        self.scroll.setWidget(page)
        return self.scroll

    def _build_list(self) -> QWidget:
        """The model rows, with a placeholder until they are built."""
        self.list_widget = QWidget()
        self.list_layout = QVBoxLayout(self.list_widget)
        self.list_layout.setContentsMargins(0, 0, 0, 0)
        self.list_layout.setSpacing(8)
        self.placeholder = muted_label("Looking for models\u2026")
        self.list_layout.addWidget(self.placeholder)
        self.list_layout.addStretch(1)
        return self.list_widget

    # -- public API -----------------------------------------------------------------------
    def save_filters(self) -> None:
        """Remember "run here", the sort order and the search for the next start."""
        self._save_timer.stop()
        wanted = {"models_only_runnable": self.only_runnable.isChecked(),
                  "models_sort": SORTS[self.sort_combo.currentText()], "models_search": self.search.text()}
        current = settings.load()
        if any(current.get(k) != v for k, v in wanted.items()):
            settings.update(wanted)

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 (Qt's name)
        if self._save_timer.isActive():
            self.save_filters()
        super().hideEvent(event)

    def check_hub(self) -> None:
        """Ask (off the GUI thread) whether the Hub answers; the recommendations say so when it does not."""
        self.recommended.set_reach(None)
        run_async(hub.reachable, self.recommended.set_reach, lambda exc: log.warning("hub check failed: %s", exc),
                  name="hub-reachable", owner=self)

    def download_and_chat(self, name: str) -> None:
        """Download a model (progress here and in the panel), then launch it and open the chat."""
        self._chat_after.add(name)
        self.downloads_view.add(name)

    def launch_default(self, name: str) -> None:
        """Launch a model with the default plan for this computer (off the GUI thread): emits launch_requested."""
        hw = self.hw
        run_async(lambda: launch.plan(name, hw), self.launch_requested.emit,
                  lambda exc: self._launch_failed(name, exc), name=f"plan-{name}", owner=self)

    def add_downloads_panel(self, widget: QWidget) -> None:
        """Place the downloads panel under the model list (one call; the panel manages itself)."""
        self.downloads_slot.addWidget(widget)

    def refresh(self, redetect: bool = True) -> None:
        """Re-read hardware (unless one was injected) and the model list, off the GUI thread."""
        if self._loading:
            self._again = self._again or ("detect" if redetect else "list")
            return
        self._loading = True
        self.hw_busy.show()
        self.hw_status.setText("Checking your hardware\u2026" if redetect and self._injected_hw is None
                               else "Reading the model list\u2026")
        self.hw_status.show()
        injected = self._injected_hw
        hw_now = self.hw if not redetect else None
        run_async(lambda: injected or hw_now or H.detect(), self._hardware_ready, self._load_failed,
                  name="detect-hardware", owner=self)

    def relist(self) -> None:
        """Refresh: list the catalog's repositories on the Hub again (off the GUI thread), then re-read the list."""
        self.refresh_button.setEnabled(False)
        self.hw_busy.show()
        self.hw_status.setText("Listing the catalog's files on the Hugging Face Hub\u2026")
        self.hw_status.show()
        run_async(catalog.refresh, self._relisted, self._relist_failed, name="hub-relist", owner=self)

    def _relisted(self, result: listings.RefreshResult) -> None:
        """Say what the Hub lists differently now (each changed entry, one line), then show the new list."""
        self.refresh_button.setEnabled(True)
        self.last_relist = result
        lines = [result.summary() + "."]
        lines += [f"{display_name(c.variant)}: {c.detail}" for c in result.changes[:MAX_CHANGE_LINES]]
        if len(result.changes) > MAX_CHANGE_LINES:
            lines.append(f"\u2026 and {len(result.changes) - MAX_CHANGE_LINES} more (ember models --refresh lists all)")
        self.show_notice("\n".join(lines), error=bool(result.failed) and not result.listed)
        self.relisted.emit(result)
        self.refresh()

    def _relist_failed(self, exc: BaseException) -> None:
        self.refresh_button.setEnabled(True)
        self.show_notice(f"Ember could not list the catalog on the Hub: {exc}; the model list is unchanged",
                         error=True)
        self.refresh()

    def _launch_failed(self, name: str, exc: BaseException) -> None:
        problem = getattr(exc, "message", None) or getattr(exc, "problem", None) or str(exc)
        text = f"{display_name(name)} cannot start: {problem}"
        self.recommended.launch_failed(name, text)
        self.show_notice(text, error=True)

    def set_hardware(self, hw: H.HardwareProfile | None) -> None:
        """Judge the models against another profile (None: this computer again)."""
        self._injected_hw = hw
        self.refresh()

    def row_widget(self, name: str) -> ModelRow | None:
        return self.row_widgets.get(name)

    def open_launch_dialog(self, name: str) -> LaunchDialog | None:
        """Open the launch dialog for a model (window-modal, not blocking); emits launch_requested on Launch."""
        if self.hw is None:
            return None
        try:
            spec = lookup.resolve(name)
        except store.ModelError as exc:
            self.show_notice(f"{exc.name}: {exc.problem}", error=True)
            return None
        dlg = LaunchDialog(spec, self.hw, self)
        dlg.setAttribute(Qt.WA_DeleteOnClose)
        dlg.accepted.connect(lambda: self._launch_accepted(dlg))
        dlg.open()
        return dlg

    def import_path(self, path: str | os.PathLike) -> store.ModelSpec | None:
        """Check and add a model file or folder; the core's reason is shown when it is refused."""
        label = Path(path).name
        try:
            spec = store.add_local(path)
        except store.ModelError as exc:
            self.show_notice(f"{label} was not added: {exc.problem}", error=True)
            return None
        except OSError as exc:
            self.show_notice(f"{label} was not added: {exc.strerror or exc}", error=True)
            return None
        size = units.size(spec.size_bytes or None, "size unknown")
        self.show_notice(f"Added {spec.display_name or spec.name} ({size}) "
                         f"as \u201c{spec.name}\u201d. The file stays where it is.")
        self.refresh(redetect=False)
        return spec

    def remove_model(self, name: str) -> None:
        """Forget a user-added model; the file itself is never deleted."""
        row = next((r for r in self.rows if r["name"] == name), {})
        try:
            where = lookup.resolve(name).path
        except store.ModelError:
            where = None
        if store.remove_local(name):
            self.show_notice(f"Removed {row.get('display_name') or name} from Ember's list. The file itself "
                             f"was not deleted" + (f" and is still at {where}." if where else "."))
        self.refresh(redetect=False)

    def show_notice(self, text: str, error: bool = False) -> None:
        self.notice_label.setText(text)
        self.notice_label.setProperty("ember", "error" if error else "")
        self.notice_label.style().unpolish(self.notice_label)
        self.notice_label.style().polish(self.notice_label)
        self.notice_label.setAccessibleName("Error" if error else "Message")
        self.notice.show()

    # -- file dialogs -----------------------------------------------------------------------
    def add_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Add a model file", str(Path.home()),
                                              "GGUF models (*.gguf);;All files (*)")
        if path:
            self.import_path(path)

    def add_model_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a model folder", str(Path.home()))
        if path:
            self.import_path(path)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if event.mimeData().hasUrls() and all(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.import_path(url.toLocalFile())
        event.acceptProposedAction()

    # -- loading ------------------------------------------------------------------------------
    def _hardware_ready(self, hw: H.HardwareProfile) -> None:
        self.hw = hw
        self._show_hardware(hw)
        self.hw_status.setText("Checking which models run here\u2026")
        run_async(lambda: load_rows(hw), self._rows_ready, self._load_failed, name="model-rows", owner=self)

    def _load_failed(self, exc: BaseException) -> None:
        self._loading = False
        self.hw_busy.hide()
        self.hw_status.hide()
        self.show_notice(f"Ember could not read the model list: {getattr(exc, 'problem', None) or exc}", error=True)
        self._run_pending()

    def _rows_ready(self, loaded: tuple[list[dict], bool]) -> None:
        """Build the rows a chunk per event-loop turn: hundreds of rows never freeze the window."""
        rows, self.has_chat = loaded
        self.rows = rows
        self.recommended.set_models(recommend.recommended(rows), self.has_chat)
        for job in self.downloads_view.manager.jobs():
            self.recommended.update_job(job)
        self._order = {r["name"]: i for i, r in enumerate(rows)}
        for w in self.row_widgets.values():
            self.list_layout.removeWidget(w)
            w.deleteLater()
        self.row_widgets = {}
        self._layout_order: list[str] = []
        self._build_queue = sorted(rows, key=self._sort_key)
        self.placeholder.setVisible(not rows)
        self.placeholder.setText("No models yet. Add a GGUF file you have with \u201cAdd model file\u2026\u201d.")
        self._build_some()

    def _build_some(self) -> None:
        only = self.only_runnable.isChecked()
        for r in self._build_queue[:BUILD_CHUNK]:
            w = ModelRow(r)
            w.launch_clicked.connect(self.open_launch_dialog)
            w.stop_clicked.connect(self.stop_model)
            w.remove_clicked.connect(self.remove_model)
            w.download_clicked.connect(self.download_requested)
            w.setVisible(not only or r.get("fit") in RUNS_HERE)
            job = self.downloads_view.manager.job(r["name"])
            if job is not None and not r.get("local"):
                w.set_download(job)
            self.row_widgets[r["name"]] = w
            self.list_layout.insertWidget(len(self._layout_order) + 1, w)  # after the placeholder
            self._layout_order.append(r["name"])
        del self._build_queue[:BUILD_CHUNK]
        if self._build_queue:
            self.hw_status.setText(f"Listing models\u2026 {len(self.row_widgets)} of {len(self.rows)}")
            QTimer.singleShot(0, self, self._build_some)
            return
        self._loading = False
        self.hw_busy.hide()
        self.hw_status.hide()
        self._update_states()
        self._apply_view()
        self.models_loaded.emit()
        self._run_pending()

    def _run_pending(self) -> None:
        again, self._again = self._again, None
        if again:
            self.refresh(redetect=again == "detect")

    def _show_hardware(self, hw: H.HardwareProfile) -> None:
        cores = f"{hw.cpu_cores} core{'s' if hw.cpu_cores != 1 else ''}"
        self.cpu_label.setText(f"<b>CPU</b>&nbsp;&nbsp;{hw.cpu_name or hw.arch} \u00b7 {cores}")
        self.ram_label.setText(f"<b>Memory</b>&nbsp;&nbsp;{units.gib(hw.ram_available_bytes)} free "
                               f"of {units.gib(hw.ram_total_bytes)}")
        while self.gpu_labels.count():
            item = self.gpu_labels.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        if not hw.gpus:
            lab = QLabel("<b>GPU</b>&nbsp;&nbsp;none found: models run on the CPU")
            self.gpu_labels.addWidget(lab)
        for g in hw.gpus:
            lab = QLabel(f"<b>GPU</b>&nbsp;&nbsp;{g.name} \u00b7 {units.gib(g.memory_free_bytes)} free of "
                         f"{units.gib(g.memory_total_bytes)}"
                         + (f" <span style='color: palette(placeholder-text)'>({g.llamacpp_device})</span>"
                            if g.llamacpp_device else ""))
            lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
            self.gpu_labels.addWidget(lab)
        unusable = [g for g in hw.gpus if not g.usable_by_llamacpp]
        if unusable:
            names = ", ".join(g.name for g in unusable)
            build = {"cpu": "CPU-only build", "unknown": "installed build", "": "installed build"}.get(
                hw.llamacpp_build, f"{hw.llamacpp_build.upper()} build")
            self.gpu_note.setText(
                f"\u26a0 llama.cpp cannot use {names}: the {build} of llama.cpp (xllamacpp) is installed, "
                f"so GGUF models run on the CPU. Install xllamacpp's {unusable[0].backend.upper()} build "
                "to use this GPU.")
            self.gpu_note.show()
        else:
            self.gpu_note.hide()

    # -- view -----------------------------------------------------------------------------------
    def _sort_key(self, row: dict):
        """Best fit first: what runs here, fastest first (expected tokens/s on this computer), then the rest."""
        mode = SORTS[self.sort_combo.currentText()]
        name = (row.get("display_name") or row["name"]).lower()
        if mode == "name":
            return (name,)
        if mode == "size":
            return (row.get("size_bytes") or row.get("weights_bytes") or 0, name)
        speed = row.get("expected_tokens_per_second") if row.get("fit") in RUNS_HERE else None
        return (0 if speed else 1, -(speed or 0.0), FIT_ORDER.get(row.get("fit"), 9),
                0 if row.get("local") else 1, self._order.get(row["name"], 0))

    def _apply_view(self, *_args) -> None:
        if self._build_queue:
            return  # applied when the last chunk is built
        only = self.only_runnable.isChecked()
        ordered = [r["name"] for r in sorted(self.rows, key=self._sort_key) if r["name"] in self.row_widgets]
        if ordered != self._layout_order:
            for i, name in enumerate(ordered):
                w = self.row_widgets[name]
                self.list_layout.removeWidget(w)
                self.list_layout.insertWidget(i + 1, w)  # after the placeholder
            self._layout_order = ordered
            self._set_tab_order()
        elif _args == ():
            self._set_tab_order()
        words = self.search.text().lower().split()
        shown = 0
        for r in self.rows:
            w = self.row_widgets.get(r["name"])
            if w is not None:
                hay = f"{r.get('display_name') or ''} {r['name']} {r.get('quantization') or ''}".lower()
                visible = (not only or r.get("fit") in RUNS_HERE) and all(x in hay for x in words)
                w.setVisible(visible)
                shown += visible
        total = len(self.rows)
        self.count_label.setText(f"{shown} of {total} models" if shown != total else
                                 f"{total} model{'s' if total != 1 else ''}")

    def _set_tab_order(self) -> None:
        """Tab follows the visual order of the rows."""
        prev = self.sort_combo
        for name in self._layout_order:
            w = self.row_widgets[name]
            for b in (w.launch_button, w.stop_button, w.download_button, w.remove_button, w.why_toggle):
                QWidget.setTabOrder(prev, b)
                prev = b

    # -- downloads --------------------------------------------------------------------------------
    def _download_changed(self, name: str) -> None:
        """A download moved: its rows follow, the tray hears the fraction, a finished "Download and chat" launches."""
        job = self.downloads_view.manager.job(name)
        if job is None:
            return
        self.recommended.update_job(job)
        row = self.row_widgets.get(name)
        if row is not None and not row.row.get("local"):
            row.set_download(job)
        self.download_progress.emit(name, download_fraction(job))
        if job.state == "ready" and name in self._chat_after:
            self._chat_after.discard(name)
            self.show_notice(f"{display_name(name)} is downloaded and checked. Starting it and opening the "
                             "chat\u2026")
            self._starting = name
            self.launch_default(name)
        elif job.state in ("failed", "cancelled"):
            self._chat_after.discard(name)

    # -- engines ----------------------------------------------------------------------------------
    def _engine_ready(self, name: str, _running) -> None:
        if name == self._starting:  # the chat has it now: the "Starting it" notice is done
            self._starting = None
            self.notice.hide()

    def _engine_failed(self, name: str, error: Exception) -> None:
        if name == self._starting:
            self._starting = None
            message = str(getattr(error, "message", None) or error).strip().splitlines()
            self.show_notice(f"{display_name(name)} did not start" + (f": {message[0]}" if message else "."),
                             error=True)
        w = self.row_widgets.get(name)
        if w is not None:
            w.set_state(None)

    def _update_states(self) -> None:
        running = {r.plan.model.name for r in self.manager.running()}
        for name, w in self.row_widgets.items():
            if w.state == "stopping" and name in running:
                continue
            if name in running:
                w.set_state("running")
            elif self.manager.is_loading(name):
                w.set_state("loading")
            else:
                w.set_state(None)

    def stop_model(self, name: str) -> None:
        """Stop (or cancel loading) off the GUI thread; the row says so meanwhile."""
        w = self.row_widgets.get(name)
        if self.manager.is_loading(name):
            self.manager.cancel_loading(name)
            return
        if w is not None:
            w.set_state("stopping")
        run_async(lambda: self.manager.stop(name), lambda _r: self._update_states(),
                  lambda exc: self.show_notice(f"Stopping {name} failed: {exc}", error=True),
                  name=f"stop-{name}", owner=self)

    def _launch_accepted(self, dlg: LaunchDialog) -> None:
        plan = dlg.plan()
        if isinstance(plan, LaunchPlan):
            self.launch_requested.emit(plan)
