"""The downloads panel: the queue with progress, speed and time left, pause/resume/cancel per item,
and the disk space downloaded models take, with delete.

All the work is :class:`engines.models.downloads.DownloadManager`'s (its worker
threads); this widget only shows it. Job changes reach it through
:class:`desktop.bridge.ManagerBridge` as a job's name on the GUI thread, and the
row reads the job then. Deleting files runs off the GUI thread too.

Use :func:`attach` to put it in the models window: it connects the window's
"Download" buttons to the queue and refreshes the list when a download is ready
(the models window calls it itself). "Open folder" opens the Hub cache in the
file manager, or shows the path with Copy where none can.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QFrame, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                               QVBoxLayout, QWidget)

from engines import units
from engines.models import downloads as D
from engines.models import catalog, hub, records

from .bridge import ManagerBridge, run_async
from .widgets import PathNote, error_label, muted_label, open_folder, text_label

log = logging.getLogger(__name__)

STATE_WORDS = {"queued": "Waiting", "downloading": "Downloading", "paused": "Paused", "verifying": "Checking",
               "ready": "Ready (verified)", "failed": "Failed", "cancelled": "Cancelled"}


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "time left unknown"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min left"
    return f"{s // 60}:{s % 60:02d} left"


def display_name(name: str) -> str:
    """"Qwen2.5 1.5B Instruct (Q4_K_M)" for a catalog variant's id; other names as they are."""
    entry = catalog.entries().get(name)
    return (catalog.spec_of(entry, with_path=False).display_name or name) if entry else name


def error_words(error: dict) -> str:
    """A failed download's error as a sentence for the window (the core's raw reason goes in the tooltip)."""
    if error.get("kind") == "network":
        host = urlsplit(str(error.get("endpoint") or "")).netloc or "the Hugging Face Hub"
        kept = error.get("partial_bytes") or 0
        return (f"Ember cannot reach {host}: this computer seems to be offline, or the site is blocked."
                + (f" The {units.size(kept)} already downloaded are kept; Retry resumes." if kept else ""))
    if error.get("kind") == "bug":
        return f"The download stopped because of a bug in Ember ({error.get('message', '')}). Retry may work."
    return str(error.get("message") or "The download failed.")


def progress_text(job: D.Job) -> str:
    """'115 MiB of 241 MiB · 12 MiB/s · 0:11 left' (the line under the bar)."""
    done = units.size(job.done_bytes) if job.done_bytes else "0 MiB"
    total = units.size(job.total_bytes) if job.total_bytes else "?"
    if job.state == "downloading":
        speed = f"{units.size(job.speed_bps)}/s" if job.speed_bps else "starting"
        return f"{done} of {total} \u00b7 {speed} \u00b7 {_eta(job.eta_s)}"
    if job.state == "paused":
        return f"Paused at {done} of {total}; the partial file is kept"
    if job.state == "ready":
        return f"{total}, checked against the hub's checksum"
    return STATE_WORDS.get(job.state, job.state)


class JobRow(QFrame):
    """One download: name, state, bar, numbers, and its buttons."""

    def __init__(self, view: "DownloadsView", name: str):
        super().__init__()
        self.view, self.name = view, name
        self.setFrameShape(QFrame.StyledPanel)
        grid = QGridLayout(self)
        grid.setContentsMargins(10, 6, 10, 6)
        self.title = QLabel(f"<b>{display_name(name)}</b>")
        self.title.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.title.setToolTip(name)
        self.state = muted_label(wrap=False)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setAccessibleName(f"Download progress of {name}")
        self.numbers = muted_label()
        self.error = error_label()
        self.pause_button = QPushButton("Pause")
        self.pause_button.setAccessibleName(f"Pause the download of {name}")
        self.pause_button.clicked.connect(self._pause_or_resume)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName(f"Cancel the download of {name} and delete its partial file")
        self.cancel_button.clicked.connect(lambda: view.manager.cancel(name))
        self.clear_button = QPushButton("Clear")
        self.clear_button.setAccessibleName(f"Remove {name} from the list")
        self.clear_button.clicked.connect(lambda: view.clear(name))
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.state)
        grid.addLayout(top, 0, 0)
        grid.addWidget(self.bar, 1, 0)
        grid.addWidget(self.numbers, 2, 0)
        grid.addWidget(self.error, 3, 0)
        buttons = QHBoxLayout()
        for b in (self.pause_button, self.cancel_button, self.clear_button):
            buttons.addWidget(b)
        grid.addLayout(buttons, 0, 1, 3, 1, Qt.AlignTop)
        grid.setColumnStretch(0, 1)

    def _pause_or_resume(self) -> None:
        job = self.view.manager.job(self.name)
        if job is None:
            return
        if job.state in ("downloading", "queued"):
            self.view.manager.pause(self.name)
        else:
            self.view.manager.resume(self.name)

    def update_from(self, job: D.Job) -> None:
        self.state.setText(STATE_WORDS.get(job.state, job.state))
        self.bar.setValue(int(1000 * job.done_bytes / job.total_bytes) if job.total_bytes else 0)
        self.bar.setFormat(f"{100 * job.done_bytes / job.total_bytes:.0f}%" if job.total_bytes else "")
        self.numbers.setText(progress_text(job))
        active = job.state in ("downloading", "queued")
        verb = "Pause" if active else "Retry" if job.state == "failed" else "Resume"
        self.pause_button.setText(verb)
        self.pause_button.setAccessibleName(f"{verb} the download of {self.name}")
        self.pause_button.setVisible(job.state in ("downloading", "queued", "paused", "failed"))
        self.cancel_button.setVisible(job.state in ("downloading", "queued", "paused", "failed"))
        self.clear_button.setVisible(job.state in ("ready", "cancelled", "failed"))
        if job.error:
            self.error.setText(error_words(job.error))
            self.error.setToolTip(str(job.error.get("message", "")))
            self.error.show()
        else:
            self.error.hide()


class DownloadsView(QGroupBox):
    """The queue and the downloaded models. ``model_ready(name)`` when a download is verified."""

    model_ready = Signal(str)
    deleted = Signal(str)

    def __init__(self, manager: D.DownloadManager | None = None, parent: QWidget | None = None):
        super().__init__("Downloads", parent)
        self.manager = manager or D.DownloadManager(max_parallel=1)
        self.rows: dict[str, JobRow] = {}
        self.bridge = ManagerBridge(downloads=self.manager, parent=self)
        self.bridge.download_changed.connect(self._on_changed)

        root = QVBoxLayout(self)
        root.setSpacing(6)
        self.empty = muted_label("Nothing is downloading. Use \u201cDownload\u2026\u201d on a model above.")
        root.addWidget(self.empty)
        self.queue = QVBoxLayout()
        self.queue.setSpacing(6)
        root.addLayout(self.queue)

        self.disk_title = text_label()
        self.open_button = QPushButton("Open folder")
        self.open_button.setAccessibleName("Open the folder of the downloaded models")
        self.open_button.clicked.connect(self.open_folder)
        disk_line = QHBoxLayout()
        disk_line.addWidget(self.disk_title, 1)
        disk_line.addWidget(self.open_button, 0, Qt.AlignTop)
        root.addLayout(disk_line)
        self.path_note = PathNote()
        root.addWidget(self.path_note)
        self.disk_list = QVBoxLayout()
        self.disk_list.setSpacing(2)
        root.addLayout(self.disk_list)
        self.notice = error_label()
        root.addWidget(self.notice)
        for job in self.manager.jobs():
            self._on_changed(job.name)
        self.refresh_disk()

    # -- API
    def add(self, name: str) -> None:
        """Queue a model (a catalog name or OWNER/REPO:FILE)."""
        self.manager.add(name)

    def clear(self, name: str) -> None:
        self.manager.remove(name)
        row = self.rows.pop(name, None)
        if row is not None:
            row.setParent(None)
            row.deleteLater()
        self._update_empty()

    def open_folder(self) -> bool:
        """Open the downloads' folder (the Hub cache); without a file manager, show its path with Copy."""
        folder = hub.cache()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.info("cannot create %s: %s", folder, exc)
        return open_folder(folder, self.path_note)

    def delete_model(self, name: str) -> None:
        """Delete a downloaded model's files, off the GUI thread."""
        def done(freed: object) -> None:
            self.notice.hide()
            self.refresh_disk()
            self.deleted.emit(name)

        def failed(exc: BaseException) -> None:
            self.notice.setText(f"Could not delete {name}: {exc}")
            self.notice.show()

        run_async(lambda: D.delete(name), done, failed, name=f"delete-{name}", owner=self)

    def refresh_disk(self) -> None:
        while self.disk_list.count():
            item = self.disk_list.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        items = records.downloaded()
        total = sum(i["bytes"] for i in items)
        self.disk_title.setText(f"<b>Downloaded models</b> \u2014 {units.size(total)} on disk in "
                                f"{hub.cache()}" if items else "<b>Downloaded models</b> \u2014 none yet")
        for i in items:
            line = QHBoxLayout()
            w = QWidget()
            w.setLayout(line)
            line.setContentsMargins(0, 0, 0, 0)
            name = QLabel(i["name"] if i["ok"] else f"{i['name']} (files missing)")
            name.setTextInteractionFlags(Qt.TextSelectableByMouse)
            name.setToolTip(i["path"] or "")
            size = muted_label(units.size(i["bytes"] or None, "size unknown"), wrap=False)
            delete = QPushButton("Delete")
            delete.setAccessibleName(f"Delete the downloaded files of {i['name']}")
            delete.clicked.connect(lambda _=False, n=i["name"]: self.delete_model(n))
            line.addWidget(name, 1)
            line.addWidget(size)
            line.addWidget(delete)
            self.disk_list.addWidget(w)

    # -- updates (GUI thread)
    def _on_changed(self, name: str) -> None:
        job = self.manager.job(name)
        if job is None:
            return
        row = self.rows.get(name)
        if row is None:
            row = JobRow(self, name)
            self.rows[name] = row
            self.queue.addWidget(row)
        row.update_from(job)
        self._update_empty()
        if job.state == "ready":
            self.refresh_disk()
            self.model_ready.emit(name)

    def _update_empty(self) -> None:
        self.empty.setVisible(not self.rows)


def attach(window, manager: D.DownloadManager | None = None) -> DownloadsView:
    """Put a downloads panel into a models window: its Download buttons queue, a ready model refreshes it."""
    view = DownloadsView(manager, window)
    window.add_downloads_panel(view)
    window.download_requested.connect(view.add)
    view.model_ready.connect(lambda _name: window.refresh(redetect=False))
    view.deleted.connect(lambda _name: window.refresh(redetect=False))
    return view
