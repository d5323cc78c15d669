""""Recommended for this computer": the best one to three chat models that fit, each with one
"Download and chat" button, at the top of the models window.

The choice is the core's (:func:`engines.models.recommend.annotate` over the
catalog rows: fit, speed estimate, quality tier); this module lays it out and
shows each download's progress. The models window owns the downloads and the
launch: it listens to :attr:`RecommendedView.download_and_chat` and feeds
download jobs back with :meth:`RecommendedView.update_job`.

Open when no instruction-following model is on this computer; folded (one
click away) once there is one. Offline, it says so plainly and offers the
starter, which needs no network.
"""
from __future__ import annotations

import logging

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QFrame, QGridLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QToolButton,
                               QVBoxLayout, QWidget)

from engines import units
from engines.models import downloads as D
from engines.models.hub import Reach

from .downloads_view import progress_text
from .widgets import error_label, muted_label, primary_button, text_label

log = logging.getLogger(__name__)

TITLE = "Recommended for this computer"
INTRO_FIRST_RUN = ("The starter that comes with Ember is a tiny offline demo: it continues your text and does "
                   "not follow instructions. For a real chat, download one of these. Each fits this computer "
                   "and writes at a usable speed.")
INTRO = "Chat models picked for this computer: each fits in its memory and writes at a usable speed."
NONE_FITS = ("No chat model in the catalog fits this computer well enough to recommend: each would need more "
             "memory or would write too slowly. The starter still works, offline.")
BUTTON = "Download and chat"


def _bold(label: QLabel, scale: float = 1.0) -> QLabel:
    f = label.font()
    f.setBold(True)
    if scale != 1.0:
        f.setPointSizeF(f.pointSizeF() * scale)
    label.setFont(f)
    return label


class RecommendedRow(QFrame):
    """One recommended model: why it was picked, its download size, the button and its progress."""

    clicked = Signal(str)

    def __init__(self, row: dict, parent: QWidget | None = None):
        super().__init__(parent)
        self.row, self.name = row, row["name"]
        self.state: str | None = None   # the download job's state, None before any
        self.online = True
        self.setFrameShape(QFrame.StyledPanel)
        self.setObjectName("recommendedRow")
        grid = QGridLayout(self)
        grid.setContentsMargins(10, 8, 10, 8)
        grid.setVerticalSpacing(3)
        title = row.get("display_name") or self.name
        head = QHBoxLayout()
        head.setSpacing(10)
        self.title = _bold(QLabel(f"{row.get('recommended_rank')}. {title}"))
        self.title.setTextInteractionFlags(Qt.TextSelectableByMouse)
        exact = row.get("size_bytes") if row.get("size_exact") else None
        size = exact or row.get("size_bytes") or row.get("weights_bytes")
        words = f"{units.size(size)} to download" if exact else f"about {units.size(size)} to download (estimated)"
        self.size_label = muted_label(words if size else "", wrap=False)
        head.addWidget(self.title)
        head.addWidget(self.size_label)
        head.addStretch(1)
        grid.addLayout(head, 0, 0)
        self.because = muted_label(row.get("recommended_because") or "")
        grid.addWidget(self.because, 1, 0)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setMaximumHeight(14)
        self.bar.setAccessibleName(f"Download progress of {title}")
        self.status = muted_label()
        self.error = error_label()
        for w in (self.bar, self.status):
            w.hide()
        grid.addWidget(self.bar, 2, 0)
        grid.addWidget(self.status, 3, 0)
        grid.addWidget(self.error, 4, 0)
        self.button = primary_button(BUTTON)
        self.button.setAccessibleName(f"Download {title} and start a chat with it")
        self.button.clicked.connect(lambda: self.clicked.emit(self.name))
        grid.addWidget(self.button, 0, 1, 2, 1, Qt.AlignTop)
        grid.setColumnStretch(0, 1)

    def set_online(self, online: bool) -> None:
        self.online = online
        self._enable()

    def _enable(self) -> None:
        busy = self.state in ("queued", "downloading", "verifying", "ready")
        self.button.setEnabled(self.online and not busy)
        self.button.setToolTip("" if self.online else "Downloads need a network connection")

    def update_job(self, job: D.Job) -> None:
        """Show a download's state in words under the model, and what the button does now."""
        self.state = job.state
        fraction = job.done_bytes / job.total_bytes if job.total_bytes else 0.0
        self.bar.setRange(0, 0 if job.state == "queued" else 1000)
        self.bar.setValue(int(1000 * fraction))
        self.bar.setVisible(job.state in ("queued", "downloading", "paused", "verifying"))
        self.status.setText({"queued": "Waiting to download\u2026",
                             "verifying": "Checking the download\u2026",
                             "ready": "Downloaded. Starting it and opening the chat\u2026",
                             }.get(job.state) or progress_text(job))
        self.status.setVisible(job.state != "cancelled")
        self.error.setText(f"The download failed: {job.message}" if job.state == "failed" else "")
        self.error.setVisible(job.state == "failed")
        self.button.setText({"queued": "Waiting\u2026", "downloading": "Downloading\u2026",
                             "verifying": "Checking\u2026", "ready": "Starting\u2026",
                             "paused": "Resume and chat", "failed": "Try again"}.get(job.state, BUTTON))
        self._enable()

    def set_launch_failed(self, message: str) -> None:
        self.state = None
        self.status.hide()
        self.error.setText(message)
        self.error.show()
        self.button.setText(BUTTON)
        self._enable()


class RecommendedView(QFrame):
    """The section: a fold-out heading, a sentence on why, the rows, and the offline note."""

    download_and_chat = Signal(str)   # a catalog variant's name: download it, then launch it and open the chat
    starter_requested = Signal()      # chat with the starter (offline, or nothing fits)
    recheck_requested = Signal()      # ask the Hub again

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("recommended")
        self.rows: dict[str, RecommendedRow] = {}
        self.has_chat: bool | None = None
        self.reach: Reach | None = None
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        root.setSpacing(6)
        root.addLayout(self._build_heading())
        self.body = QWidget()
        body = QVBoxLayout(self.body)
        body.setContentsMargins(0, 0, 0, 0)
        body.setSpacing(6)
        self.intro = text_label(INTRO_FIRST_RUN)
        body.addWidget(self.intro)
        body.addWidget(self._build_offline())
        self.list = QVBoxLayout()
        self.list.setSpacing(6)
        body.addLayout(self.list)
        root.addWidget(self.body)
        self.hide()  # until the first list arrives

    def _build_heading(self) -> QHBoxLayout:
        line = QHBoxLayout()
        self.toggle = QToolButton()
        self.toggle.setText(TITLE)
        self.toggle.setCheckable(True)
        self.toggle.setChecked(True)
        self.toggle.setAutoRaise(True)
        self.toggle.setArrowType(Qt.DownArrow)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setAccessibleName(TITLE)
        self.toggle.setStyleSheet("QToolButton { border: none; padding: 2px 0; }")
        _bold(self.toggle, 1.15)
        self.toggle.toggled.connect(self.set_expanded)
        self.count = muted_label(wrap=False)
        line.addWidget(self.toggle)
        line.addWidget(self.count)
        line.addStretch(1)
        return line

    def _build_offline(self) -> QFrame:
        """"Offline" in plain words, Check again, and the starter one click away."""
        self.offline = QFrame()
        self.offline.setFrameShape(QFrame.StyledPanel)
        line = QHBoxLayout(self.offline)
        line.setContentsMargins(10, 6, 10, 6)
        self.offline_label = text_label()
        self.recheck_button = QPushButton("Check again")
        self.recheck_button.clicked.connect(self.recheck_requested)
        self.starter_button = QPushButton("Chat with the starter")
        self.starter_button.setAccessibleName("Start the starter model and open the chat")
        self.starter_button.setToolTip("The tiny demo model that comes with Ember; it needs no network")
        self.starter_button.clicked.connect(self.starter_requested)
        line.addWidget(self.offline_label, 1)
        line.addWidget(self.recheck_button, 0, Qt.AlignTop)
        line.addWidget(self.starter_button, 0, Qt.AlignTop)
        self.offline.hide()
        return self.offline

    # -- API
    def set_expanded(self, on: bool) -> None:
        if self.toggle.isChecked() != on:
            self.toggle.setChecked(on)  # comes back here through toggled
            return
        self.toggle.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self.body.setVisible(on)

    def set_models(self, recommended: list[dict], has_chat: bool) -> None:
        """The recommended rows (best first) and whether a chat model is already on this computer.

        Open on a first run; folded once a chat model is here (the user's own
        fold is kept until that changes).
        """
        if has_chat != self.has_chat:
            self.set_expanded(not has_chat)
        self.has_chat = has_chat
        for w in self.rows.values():
            self.list.removeWidget(w)
            w.deleteLater()
        self.rows = {}
        for r in recommended:
            w = RecommendedRow(r)
            w.clicked.connect(self.download_and_chat)
            w.set_online(self.reach is None or self.reach.online)
            self.rows[r["name"]] = w
            self.list.addWidget(w)
        self.intro.setText(NONE_FITS if not recommended else INTRO if has_chat else INTRO_FIRST_RUN)
        self.count.setText(f"{len(recommended)} model{'s' if len(recommended) != 1 else ''}"
                           if recommended else "")
        self._show_offline()
        self.show()

    def set_reach(self, reach: Reach | None) -> None:
        """Whether downloads can work now (None: still asking)."""
        self.reach = reach
        for w in self.rows.values():
            w.set_online(reach is None or reach.online)
        self._show_offline()

    def _show_offline(self) -> None:
        offline = self.reach is not None and not self.reach.online
        if offline:
            self.offline_label.setText(f"<b>Offline.</b> {self.reach.reason[:1].upper()}{self.reach.reason[1:]}, "
                                       "so models cannot be downloaded now. The starter works without a network.")
            self.offline_label.setToolTip(self.reach.detail)
        self.recheck_button.setVisible(offline)
        self.offline.setVisible(offline or (self.has_chat is not None and not self.rows))
        if not offline and not self.rows:
            self.offline_label.setText("The starter is a tiny demo that continues your text.")

    def update_job(self, job: D.Job) -> None:
        w = self.rows.get(job.name)
        if w is not None:
            w.update_job(job)

    def launch_failed(self, name: str, message: str) -> None:
        w = self.rows.get(name)
        if w is not None:
            w.set_launch_failed(message)
