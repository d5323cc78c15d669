"""The guided error dialog: what happened, why (with the numbers), and one button per fix.

It only shows an :class:`engines.diagnosis.types.Diagnosis`; applying a fix is the
caller's job (the chat window's :class:`desktop.chat.fixes.FixActions`: one handler per
action of :mod:`engines.actions`). Clicking a fix emits :attr:`fix_action` with the
whole :class:`Fix` and, when the fix relaunches with the same engine (parameter changes
or the "relaunch" action), :attr:`fix_chosen` with its changes; then the dialog accepts.
A fix Ember cannot carry out (advice: "Update the NVIDIA driver") is shown as words,
without a button. Each button's tooltip says the command that does the same at a
terminal, for the ``where`` given (:func:`engines.actions.cli_line`).

The dialog is modal to its window, so "Show log" opens the log viewer itself, as
the dialog's own child window: a viewer owned by the blocked window could not be
scrolled or closed. A viewer still open when the dialog closes stays open.
"Details" shows the last log lines and grows the dialog to fit them.
"""
from __future__ import annotations

import logging

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFrame, QHBoxLayout, QLabel, QPlainTextEdit,
                               QPushButton, QSizePolicy, QVBoxLayout, QWidget)

from engines import actions, units
from engines.diagnosis.types import Diagnosis, Fix

from .log_viewer import LogViewer
from .widgets import ACCENT, ACCENT_TEXT

log = logging.getLogger(__name__)

DETAIL_LINES = 12  # log lines under "Details"

PRIMARY_STYLE = (f"QPushButton {{ background: {ACCENT}; color: {ACCENT_TEXT}; border: 1px solid {ACCENT}; "
                 "border-radius: 4px; padding: 5px 14px; font-weight: 600; }"
                 "QPushButton:focus { border: 2px solid palette(highlight); }")

#: facts worth a line below the words, in this order, with their labels
_FACT_LABELS = [
    ("n_prompt_tokens", "Message tokens"), ("prompt_tokens", "Message tokens"),
    ("completion_tokens", "Answer tokens"), ("n_ctx_slot", "Context per slot"), ("n_ctx", "Context"),
    ("n_parallel", "Parallel slots"), ("n_ctx_train", "Trained context"), ("alloc_bytes", "Failed allocation"),
    ("kv_cache_bytes", "KV cache (estimate)"), ("weights_bytes", "Weights (estimate)"),
    ("gpu_memory_free_bytes", "GPU memory free"), ("memory_free_bytes", "Memory free"),
    ("exit_code", "Exit code"), ("signal_name", "Signal"), ("port", "Port"), ("status", "HTTP status"),
]


def _worth_saying(key: str, facts: dict) -> bool:
    """The facts line in roles, not one engine's keys: the context, and the slots only when there are several
    (then what one slot holds); the tokens are the conversation's when the history was counted."""
    slots = facts.get("n_parallel") or 1
    if key in ("n_parallel", "n_ctx_slot"):
        return isinstance(slots, int) and slots > 1
    return True


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fact_text(key: str, value) -> str:
    if key.endswith("_bytes") and isinstance(value, (int, float)):
        return units.size(value)
    if isinstance(value, int) and not isinstance(value, bool) and key != "port":
        return f"{value:,}"
    return str(value)


class DiagnosisDialog(QDialog):
    """Shows one diagnosis; ``fix_chosen(dict)`` when the user picks a fix."""

    fix_chosen = Signal(dict)
    fix_action = Signal(Fix)             # the Fix itself (for actions without changes)
    log_shown = Signal(LogViewer)        # "Show log" opened this viewer (the dialog's child while it is open)

    def __init__(self, diagnosis: Diagnosis, parent: QWidget | None = None, where: actions.Situation | None = None):
        super().__init__(parent)
        self.diagnosis = diagnosis
        self.where = (where or actions.Situation()).with_diagnosis(diagnosis)
        self.chosen: Fix | None = None
        self.fix_buttons: list[QPushButton] = []
        self.advice_labels: list[QLabel] = []   # fixes Ember cannot carry out, said as words
        self.setWindowTitle("Ember: " + diagnosis.title)
        self.setMinimumWidth(580)
        layout = QVBoxLayout(self)
        layout.setSpacing(10)
        self.viewers: list[LogViewer] = []

        self.title_label = QLabel(diagnosis.title)
        font = QFont(self.title_label.font())
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        self.title_label.setFont(font)
        self.title_label.setWordWrap(True)
        layout.addWidget(self.title_label)

        self.explanation_label = QLabel(diagnosis.explanation)
        self.explanation_label.setWordWrap(True)
        self.explanation_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.explanation_label)

        facts = [(label, _fact_text(k, diagnosis.facts[k])) for k, label in _FACT_LABELS
                 if diagnosis.facts.get(k) not in (None, "", False) and _worth_saying(k, diagnosis.facts)]
        seen, rows = set(), []
        if diagnosis.facts.get("history"):
            facts = [("Conversation tokens" if label == "Message tokens" else label, text) for label, text in facts]
        for label, text in facts:
            if label not in seen:
                seen.add(label)
                rows.append(f"{label}: {text}".replace(" ", "\u00a0"))  # one fact never breaks
        self.facts_label = QLabel("   ·   ".join(rows))
        self.facts_label.setWordWrap(True)
        self.facts_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.facts_label.setForegroundRole(self.facts_label.foregroundRole())
        self.facts_label.setStyleSheet("color: palette(placeholder-text);")
        self.facts_label.setVisible(bool(rows))
        layout.addWidget(self.facts_label)

        if diagnosis.fixes:
            line = QFrame()
            line.setFrameShape(QFrame.HLine)
            line.setFrameShadow(QFrame.Sunken)
            layout.addWidget(line)
            layout.addWidget(QLabel("<b>What you can do</b>"))
        for fix in diagnosis.fixes:
            layout.addWidget(self._fix_row(fix, primary=not self.fix_buttons))

        self.log_view: QPlainTextEdit | None = self._details_pane(diagnosis.log_tail) if diagnosis.log_tail else None
        if self.log_view is not None:
            layout.addWidget(self.log_view)

        buttons = QDialogButtonBox()
        self.details_button = buttons.addButton("Details", QDialogButtonBox.ActionRole)
        self.details_button.setCheckable(True)
        self.details_button.setVisible(self.log_view is not None)
        self.details_button.toggled.connect(self.show_details)
        self.log_button = buttons.addButton("Show log", QDialogButtonBox.ActionRole)
        self.log_button.setEnabled(bool(diagnosis.log_path))
        self.log_button.clicked.connect(self._show_log)
        self.close_button = buttons.addButton(QDialogButtonBox.Close)
        self.close_button.clicked.connect(self.reject)
        layout.addWidget(buttons)
        if self.fix_buttons:
            self.fix_buttons[0].setDefault(True)
            self.fix_buttons[0].setFocus()

    def _details_pane(self, tail: list[str]) -> QPlainTextEdit:
        """The last log lines, all of them visible without scrolling up (hidden until "Details")."""
        lines = tail[-DETAIL_LINES:]
        view = QPlainTextEdit("\n".join(lines))
        view.setReadOnly(True)
        view.setLineWrapMode(QPlainTextEdit.NoWrap)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.Monospace)
        mono.setPointSizeF(max(7.0, self.font().pointSizeF() * 0.85))
        view.setFont(mono)
        rows = max(len(lines), 4)
        margins = 2 * (view.frameWidth() + int(view.document().documentMargin())) + 4
        scrollbar = view.horizontalScrollBar().sizeHint().height()
        view.setMinimumHeight(rows * view.fontMetrics().lineSpacing() + margins + scrollbar)
        view.setVisible(False)
        view.setAccessibleName("Last lines of the engine log")
        return view

    def show_details(self, on: bool) -> None:
        """Show or hide the log lines; the dialog grows to fit them and shrinks back after."""
        if self.log_view is None:
            return
        self.log_view.setVisible(on)
        self.fit_height(shrink=not on)

    def fit_height(self, shrink: bool = False) -> None:
        """At least as tall as the wrapped text needs at the current width (Qt does not do this for a
        window's word-wrapped labels by itself: they were clipped); ``shrink`` to exactly that."""
        layout = self.layout()
        layout.activate()
        need = layout.totalMinimumSize().height()
        if layout.hasHeightForWidth():
            need = max(need, layout.totalHeightForWidth(self.width()))
        self.setMinimumHeight(need)
        if shrink or self.height() < need:
            self.resize(self.width(), need)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.fit_height()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            self.fit_height()  # narrower: the notes wrap onto more lines

    def _fix_row(self, fix: Fix, primary: bool) -> QWidget:
        try:
            step = actions.step(fix)
        except actions.UnknownAction as exc:  # never a button that does nothing: words instead
            log.warning("%s", exc)
            step = actions.Step(actions.Action.ADVICE, label=fix.label, note=fix.note)
        if step.action is actions.Action.ADVICE:
            return self._advice_row(fix)
        row = QWidget()
        h = QHBoxLayout(row)
        h.setContentsMargins(0, 0, 0, 0)
        button = QPushButton(fix.label)
        button.setSizePolicy(QSizePolicy.Maximum, QSizePolicy.Fixed)
        button.setMinimumWidth(220)
        if primary:
            button.setStyleSheet(PRIMARY_STYLE)
        button.setAutoDefault(primary)
        details = fix.note
        if fix.changes:
            change = actions.change_words(fix.changes, self.where.engine)
            details = f"{details}\n{change}" if details else change
        line = actions.cli_line(fix, self.where, self.diagnosis)
        button.setToolTip(("At a terminal: " if line.command else "") + line.text)
        button.setAccessibleName(fix.label)
        button.clicked.connect(lambda _=False, f=fix: self.choose(f))
        h.addWidget(button, 0, Qt.AlignTop)
        note = QLabel(details)
        note.setWordWrap(True)
        policy = QSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        policy.setHeightForWidth(True)  # without it the row never grows for a note that wraps: it was clipped
        note.setSizePolicy(policy)
        h.addWidget(note, 1)
        self.fix_buttons.append(button)
        return row

    def _advice_row(self, fix: Fix) -> QWidget:
        """A fix Ember cannot carry out: its words, no button."""
        label = QLabel(f"\u2022 <b>{_escape(fix.label)}</b>" + (f"<br>{_escape(fix.note)}" if fix.note else ""))
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        label.setAccessibleName(fix.label)
        policy = QSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        policy.setHeightForWidth(True)
        label.setSizePolicy(policy)
        self.advice_labels.append(label)
        return label

    def choose(self, fix: Fix) -> None:
        """Pick a fix (what a click does), then close.

        ``fix_action(Fix)`` always; ``fix_chosen(changes)`` only for a relaunch (parameter changes, or the
        "relaunch" action with none), so an action such as "new_conversation" never relaunches and resends.
        """
        if fix.action == "show_log":
            self._show_log()
            return
        self.chosen = fix
        self.fix_action.emit(fix)
        if fix.action in (None, "relaunch") and (fix.changes or fix.action == "relaunch"):
            self.fix_chosen.emit(dict(fix.changes))
        self.accept()

    def _show_log(self) -> LogViewer | None:
        """Open the engine log in a viewer owned by this dialog (so the dialog's modality never blocks it)."""
        path = self.diagnosis.log_path
        if not path:
            return None
        viewer = LogViewer(path, self)
        viewer.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        viewer.destroyed.connect(lambda _=None, v=viewer: self.viewers.remove(v) if v in self.viewers else None)
        self.viewers.append(viewer)
        viewer.show()
        viewer.raise_()
        viewer.activateWindow()
        self.log_shown.emit(viewer)
        return viewer

    def done(self, result: int) -> None:  # noqa: N802 - Qt API
        """Close; a log viewer still open moves to the dialog's own parent window and stays open."""
        for viewer in list(self.viewers):
            if viewer.isVisible():
                geometry = viewer.geometry()
                viewer.setParent(self.parentWidget(), viewer.windowFlags())
                viewer.setGeometry(geometry)
                viewer.show()
        self.viewers.clear()
        super().done(result)
