"""Preferences: idle unload, start at login, default context size, reply limit, engine interpreters.

Reads and writes :mod:`engines.settings`; the app applies the result (manager
idle timeout, autostart entry) when the dialog is accepted.
"""
from __future__ import annotations

import logging

from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFormLayout, QGroupBox, QHBoxLayout,
                               QLabel, QLineEdit, QSpinBox, QVBoxLayout, QWidget)

from engines import settings
from engines import units
from engines.running.backends import ENGINES, LABELS

log = logging.getLogger(__name__)


class SettingsDialog(QDialog):
    """The preferences; Save writes them with :func:`engines.settings.update` (the app applies them)."""

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

    def values(self) -> dict[str, object]:
        """What the dialog would save."""
        out: dict[str, object] = {
            "idle_unload_minutes": None if self.idle_never.isChecked() else self.idle_minutes.value(),
            "start_at_login": self.start_at_login.isChecked(),
            "default_n_ctx": self.n_ctx.value(),
            "reply_limit": self.reply_limit.value(),
        }
        for engine, edit in self.engine_python.items():
            out[settings.ENGINE_PYTHON + engine] = edit.text().strip() or None
        return out

    def accept(self) -> None:
        settings.update(self.values())
        super().accept()
