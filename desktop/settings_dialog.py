"""Preferences: idle unload, start at login, default context size, reply limit, the local API, clusters,
engine interpreters.

Reads and writes :mod:`engines.settings`; the app applies the result (manager
idle timeout, autostart entry) when the dialog is accepted.
"""
from __future__ import annotations

import logging
import re

from PySide6.QtCore import Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFormLayout, QGroupBox, QHBoxLayout,
                               QLabel, QLineEdit, QMessageBox, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from engines import settings
from engines import units
from engines.cluster import ops as cluster_ops
from engines.cluster import store as cluster_store
from engines.gateway import keys as gateway_keys
from engines.running.backends import ENGINES, LABELS

from .cluster_dialog import AddClusterDialog
from .widgets import muted_label

log = logging.getLogger(__name__)

#: What a browser sends as Origin: scheme, host, optional port; nothing after.
ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


class SettingsDialog(QDialog):
    """The preferences; Save writes them with :func:`engines.settings.update` (the app applies them).
    Clusters are added and removed at once (``clusters_changed``), not on Save."""

    clusters_changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Ember Settings")
        values = settings.load()
        layout = QVBoxLayout(self)

        general = QGroupBox("General")
        form = QFormLayout(general)
        self.idle_minutes = QSpinBox(minimum=1, maximum=24 * 60, suffix=" min")
        self.idle_minutes.setAccessibleName("Unload an idle model after minutes")
        self.idle_never = QCheckBox("Never")
        minutes = values.get("idle_unload_minutes")
        self.idle_never.setChecked(minutes is None or (isinstance(minutes, (int, float)) and minutes <= 0))
        self.idle_minutes.setValue(int(minutes) if isinstance(minutes, (int, float)) and minutes > 0 else 30)
        self.idle_minutes.setEnabled(not self.idle_never.isChecked())
        self.idle_never.toggled.connect(lambda on: self.idle_minutes.setEnabled(not on))
        row = QHBoxLayout()
        row.addWidget(self.idle_minutes)
        row.addWidget(self.idle_never)
        row.addStretch(1)
        form.addRow("Unload a model unused for", row)
        form.addRow("", QLabel("Frees the memory; the next message starts it again."))
        self.start_at_login = QCheckBox("Start Ember when I log in")
        self.start_at_login.setChecked(bool(values.get("start_at_login")))
        form.addRow("", self.start_at_login)
        self.n_ctx = QSpinBox(minimum=256, maximum=1 << 20, singleStep=1024, suffix=" tokens")
        self.n_ctx.setValue(int(values.get("default_n_ctx") or units.DEFAULT_N_CTX))
        self.n_ctx.setAccessibleName("Default context size")
        form.addRow("Default context size", self.n_ctx)
        self.reply_limit = QSpinBox(minimum=16, maximum=1 << 17, singleStep=256, suffix=" tokens")
        limit = values.get("reply_limit")
        self.reply_limit.setValue(int(limit) if isinstance(limit, (int, float)) and limit > 0
                                  else int(settings.DEFAULTS["reply_limit"]))
        self.reply_limit.setAccessibleName("Reply limit")
        form.addRow("Reply limit", self.reply_limit)
        form.addRow("", QLabel("The longest reply in the chat window and ember chat; a reply that "
                               "repeats itself stops sooner."))
        layout.addWidget(general)

        layout.addWidget(self._local_api_box(values))
        layout.addWidget(self._clusters_box())

        engines_box = QGroupBox("Engine interpreters")
        eform = QFormLayout(engines_box)
        eform.addRow(QLabel("The Python that runs each engine; empty means Ember's own."))
        self.engine_python: dict[str, QLineEdit] = {}
        for engine in ENGINES:
            edit = QLineEdit(str(values.get(settings.ENGINE_PYTHON + engine) or ""))
            edit.setPlaceholderText("Ember's own")
            edit.setAccessibleName(f"Python interpreter for {LABELS[engine]}")
            self.engine_python[engine] = edit
            eform.addRow(LABELS[engine], edit)
        layout.addWidget(engines_box)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _local_api_box(self, values: dict) -> QGroupBox:
        """The one address outside tools use: on/off, port, key, browsers, the local network."""
        box = QGroupBox("Local API (for editors, agents and scripts)")
        form = QFormLayout(box)
        self.api_enabled = QCheckBox("Serve the OpenAI-compatible API while Ember is open")
        self.api_enabled.setChecked(bool(values.get("gateway_enabled", True)))
        form.addRow("", self.api_enabled)
        self.api_port = QSpinBox(minimum=1024, maximum=65535)
        self.api_port.setValue(int(values.get("gateway_port") or settings.DEFAULTS["gateway_port"]))
        self.api_port.setAccessibleName("Local API port")
        form.addRow("Port", self.api_port)
        key_row = QHBoxLayout()
        self.api_key = QLineEdit(gateway_keys.get(), readOnly=True, echoMode=QLineEdit.EchoMode.Password)
        self.api_key.setAccessibleName("Local API key")
        copy = QPushButton("Copy")
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(gateway_keys.get()))
        self.regenerate_button = QPushButton("Regenerate…")
        self.regenerate_button.clicked.connect(self.regenerate_key)
        for w in (self.api_key, copy, self.regenerate_button):
            key_row.addWidget(w)
        form.addRow("API key", key_row)
        self.max_loaded = QSpinBox(minimum=0, maximum=64, specialValueText="as memory allows")
        self.max_loaded.setValue(int(values.get("max_loaded_models") or 0))
        self.max_loaded.setAccessibleName("Models kept loaded at once")
        form.addRow("Models loaded at once", self.max_loaded)
        self.api_origins = QLineEdit(", ".join(values.get("gateway_origins") or []))
        self.api_origins.setPlaceholderText("none: web pages cannot call the API")
        self.api_origins.setAccessibleName("Web pages allowed to call the local API")
        form.addRow("Allowed web pages", self.api_origins)
        form.addRow("", QLabel("Origins such as http://localhost:3000, comma-separated. Other pages are refused."))
        self.api_lan = QCheckBox("Also accept connections from the local network")
        self.api_lan.setChecked(bool(values.get("gateway_lan")))
        form.addRow("", self.api_lan)
        self.lan_warning = QLabel("Anyone on your network who has the key can use your models and your "
                                  "computer's memory. Keep this off on public Wi-Fi.")
        self.lan_warning.setWordWrap(True)
        self.lan_warning.setStyleSheet("color: #b3261e;")
        self.lan_warning.setVisible(self.api_lan.isChecked())
        self.api_lan.toggled.connect(self.lan_warning.setVisible)
        form.addRow("", self.lan_warning)
        return box

    def _clusters_box(self) -> QGroupBox:
        """The Xinference clusters Ember can launch models on: each with Remove, and Add cluster."""
        box = QGroupBox("Clusters (Xinference)")
        self.clusters_layout = QVBoxLayout(box)
        self.cluster_rows = QVBoxLayout()
        self.clusters_layout.addLayout(self.cluster_rows)
        self.add_cluster_button = QPushButton("Add cluster\u2026")
        self.add_cluster_button.clicked.connect(self.add_cluster)
        row = QHBoxLayout()
        row.addWidget(muted_label("Run models on a team's GPU servers; they show in the models window."), 1)
        row.addWidget(self.add_cluster_button)
        self.clusters_layout.addLayout(row)
        self.show_clusters()
        return box

    def show_clusters(self) -> None:
        while self.cluster_rows.count():
            item = self.cluster_rows.takeAt(0)
            if item.layout() is not None:
                while item.layout().count():
                    w = item.layout().takeAt(0).widget()
                    if w is not None:
                        w.deleteLater()
        for c in cluster_store.list_clusters():
            row = QHBoxLayout()
            who = f"admin {c.user}" if c.can_admin else "API key (chat only)"
            row.addWidget(QLabel(f"{c.name} \u2014 {c.url} \u00b7 {who}"), 1)
            remove = QPushButton("Remove")
            remove.setAccessibleName(f"Remove cluster {c.name}")
            remove.clicked.connect(lambda _=False, name=c.name: self.remove_cluster(name))
            row.addWidget(remove)
            self.cluster_rows.addLayout(row)

    def add_cluster(self) -> AddClusterDialog:
        dialog = AddClusterDialog(self)
        dialog.added.connect(self._cluster_added)
        dialog.open()
        self.cluster_dialog = dialog
        return dialog

    def _cluster_added(self, added: cluster_ops.Added) -> None:
        self.show_clusters()
        self.clusters_changed.emit()
        if added.warning:
            QMessageBox.warning(self, f"Cluster {added.cluster.name}", added.warning)

    def remove_cluster(self, name: str) -> None:
        cluster_ops.remove(name)
        self.show_clusters()
        self.clusters_changed.emit()

    def regenerate_key(self) -> None:
        """A new key at once (after a confirmation): tools with the old key get 401 from now on."""
        answer = QMessageBox.question(self, "Regenerate the API key?",
                                      "Tools configured with the current key will be refused until you give "
                                      "them the new one.")
        if answer == QMessageBox.StandardButton.Yes:
            self.api_key.setText(gateway_keys.regenerate())

    def values(self) -> dict[str, object]:
        """What the dialog would save."""
        out: dict[str, object] = {
            "idle_unload_minutes": None if self.idle_never.isChecked() else self.idle_minutes.value(),
            "start_at_login": self.start_at_login.isChecked(),
            "default_n_ctx": self.n_ctx.value(),
            "reply_limit": self.reply_limit.value(),
            "gateway_enabled": self.api_enabled.isChecked(),
            "gateway_port": self.api_port.value(),
            "gateway_origins": [o.strip().rstrip("/") for o in self.api_origins.text().split(",") if o.strip()],
            "gateway_lan": self.api_lan.isChecked(),
            "max_loaded_models": self.max_loaded.value() or None,
        }
        for engine, edit in self.engine_python.items():
            out[settings.ENGINE_PYTHON + engine] = edit.text().strip() or None
        return out

    def bad_origins(self) -> list[str]:
        """Entries of "Allowed web pages" that are not an origin (scheme://host[:port], no path)."""
        return [o for o in self.values()["gateway_origins"] if not ORIGIN.fullmatch(o)]

    def accept(self) -> None:
        bad = self.bad_origins()
        if bad:
            QMessageBox.warning(self, "Allowed web pages",
                                f"{', '.join(bad)} is not a web page's origin. Write it as the browser's address "
                                "bar shows the site, without a path: http://localhost:3000 or https://chat.example.")
            self.api_origins.setFocus()
            return
        settings.update(self.values())
        super().accept()
