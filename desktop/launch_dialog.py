"""The launch dialog: the choices before a model starts, checked as the user types.

Everything it shows comes from the core: the engines from ``selection``, the
fields from the chosen backend's ``schema()``, the checks from its
``validate()``, the GPU-layer estimate and the warnings from ``launch.plan``
(the same call ``ember serve`` makes). Choices are remembered per model in
``engines.model_prefs``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QCompleter, QDialog, QDialogButtonBox, QDoubleSpinBox,
                               QFrame, QGridLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                               QToolButton, QVBoxLayout, QWidget)

from engines import model_prefs
from engines import units
from engines.machine.hardware import HardwareProfile
from engines.models.store import ModelSpec
from engines.running import launch
from engines.running import params as P
from engines.running import selection
from engines.running import backends
from engines.running.backends import LABELS, installed_engines

from .bridge import run_async
from .widgets import apply_style, error_label, muted_label, primary_button

log = logging.getLogger(__name__)

DEBOUNCE_MS = 300


@dataclass(frozen=True)
class FieldDef:
    """A common field; shown when the engine has a key for its ``role`` (:attr:`Engine.roles`), or when
    its schema has one of ``keys`` (the sampling fields, which play no role)."""

    name: str
    label: str
    keys: tuple[str, ...]
    kind: str  # int | float
    role: str | None = None


FIELDS = (
    FieldDef("n_ctx", "Context size", (), "int", role="context"),
    FieldDef("n_parallel", "Parallel slots", (), "int", role="parallel"),
    FieldDef("temp", "Temperature", ("sampling.temp", "temperature"), "float"),
    FieldDef("top_p", "Top P", ("sampling.top_p", "top_p"), "float"),
    FieldDef("top_k", "Top K", ("sampling.top_k", "top_k"), "int"),
)
GPU_LAYERS_KEY = "n_gpu_layers"  # the GPU-layer row's name; the engine's key is its roles.gpu_layers


def _problem_text(exc: BaseException) -> str:
    """The core's own sentence for a failure."""
    for attr in ("message", "problem"):
        text = getattr(exc, attr, None)
        if isinstance(text, str) and text:
            if attr == "problem" and getattr(exc, "name", None):
                return f"{exc.name}: {text}"
            return text
    return f"{type(exc).__name__}: {exc}"


def _typed(value: object) -> str:
    """A saved value as a row shows it (``true``, ``q8_0``, ``40``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class AdvancedRow(QWidget):
    """One ``key = value`` row, with the core's complaint under it."""

    changed = Signal()
    remove_requested = Signal(QWidget)  # the row itself

    def __init__(self, keys: list[str], key: str = "", value: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        line = QHBoxLayout()
        line.setSpacing(6)
        self.key_edit = QLineEdit(key)
        self.key_edit.setPlaceholderText("sampling.min_p")
        self.key_edit.setAccessibleName("Parameter name")
        self.key_edit.setMinimumWidth(220)
        completer = QCompleter(keys, self.key_edit)
        completer.setCaseSensitivity(Qt.CaseInsensitive)
        completer.setFilterMode(Qt.MatchContains)
        self.key_edit.setCompleter(completer)
        self.value_edit = QLineEdit(value)
        self.value_edit.setPlaceholderText("0.05")
        self.value_edit.setAccessibleName("Parameter value")
        self.remove_button = QToolButton()
        self.remove_button.setText("\u2715")
        self.remove_button.setAccessibleName("Remove this parameter row")
        self.remove_button.setToolTip("Remove this row")
        line.addWidget(self.key_edit, 3)
        line.addWidget(QLabel("="))
        line.addWidget(self.value_edit, 2)
        line.addWidget(self.remove_button)
        outer.addLayout(line)
        self.error = error_label()
        self.note = muted_label()
        self.note.hide()
        outer.addWidget(self.error)
        outer.addWidget(self.note)
        self.key_edit.textEdited.connect(self._split_assignment)
        self.key_edit.textChanged.connect(self._emit_changed)
        self.value_edit.textChanged.connect(self._emit_changed)
        self.remove_button.clicked.connect(lambda: self.remove_requested.emit(self))

    def _emit_changed(self, _text: str = "") -> None:
        self.changed.emit()

    def _split_assignment(self, text: str) -> None:
        """Typing or pasting ``sampling.top_k = 40`` into the key box fills both boxes."""
        if "=" in text:
            try:
                key, value = P.parse_assignment(text)
            except P.ParamError:
                return
            self.key_edit.setText(key)
            if value:
                self.value_edit.setText(value)
            self.value_edit.setFocus()

    def pair(self) -> tuple[str, str]:
        return self.key_edit.text().strip(), self.value_edit.text().strip()

    def is_empty(self) -> bool:
        return self.pair() == ("", "")

    def set_problem(self, text: str | None) -> None:
        self.error.setText(text or "")
        self.error.setVisible(bool(text))
        self.key_edit.setProperty("invalid", bool(text))

    def set_note(self, text: str | None) -> None:
        self.note.setText(text or "")
        self.note.setVisible(bool(text))


class LaunchDialog(QDialog):
    """Parameters before launch; :meth:`plan` is the accepted LaunchPlan."""

    def __init__(self, spec: ModelSpec, hw: HardwareProfile, parent: QWidget | None = None):
        super().__init__(parent)
        self.spec, self.hw = spec, hw
        self._plan: launch.LaunchPlan | None = None
        self._installed = installed_engines()
        self._selection = selection.select(spec, hw, installed=self._installed)
        self._schema: dict[str, P.ParamSpec] = {}
        self._backend = None
        self._field_keys: dict[str, str | None] = {}
        self._gpu_key: str | None = None   # the engine's GPU-layers key (roles.gpu_layers)
        self._generation = 0
        self._invalid = False
        self._plan_problem: str | None = None
        self.rows: list[AdvancedRow] = []

        self.setWindowTitle(f"Launch {spec.display_name or spec.name}")
        apply_style(self)
        self.setMinimumWidth(600)
        root = QVBoxLayout(self)
        root.setSpacing(10)
        self._build_header(root)
        self.focus_hint = muted_label()  # what a diagnosis' "edit parameters" fix asks to change
        self.focus_hint.hide()
        root.addWidget(self.focus_hint)
        self._grid = QGridLayout()
        self._grid.setHorizontalSpacing(16)
        self._grid.setVerticalSpacing(4)
        self._grid.setColumnStretch(1, 1)
        self._grid_rows: dict[str, list[QWidget]] = {}
        engines = self._build_engine_row()
        self._build_size_rows()
        self._build_gpu_layers_row()
        self._build_sampling_rows()
        root.addLayout(self._grid)
        self._build_advanced(root)
        self._build_footer(root)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._estimate)
        self._restore_choices(model_prefs.load(spec.name), engines)
        self._connect_fields()
        self._changed()

    # -- building ------------------------------------------------------------------------
    def _build_header(self, root: QVBoxLayout) -> None:
        """The model's name and its facts: format, quantization, size, trained context."""
        spec = self.spec
        title = QLabel(spec.display_name or spec.name)
        f = title.font()
        f.setPointSizeF(f.pointSizeF() * 1.25)
        f.setBold(True)
        title.setFont(f)
        root.addWidget(title)
        facts = [spec.format.upper(), spec.quantization, units.size(spec.size_bytes or None, "size unknown")]
        if spec.context_length:
            facts.append(f"trained on {spec.context_length:,} tokens of context")
        root.addWidget(muted_label(" \u00b7 ".join(x for x in facts if x)))

    def _add_grid_row(self, name: str, label: str, field: QWidget, help_label: QLabel | None = None) -> None:
        """A labelled field (and a help line under it); ``name`` shows or hides them together."""
        grid = self._grid
        r = grid.rowCount()
        lab = QLabel(label)
        lab.setBuddy(field.focusProxy() or field)
        grid.addWidget(lab, r, 0, Qt.AlignLeft | Qt.AlignVCenter)
        grid.addWidget(field, r, 1)
        widgets = [lab, field]
        if help_label is not None:
            grid.addWidget(help_label, r + 1, 1)
            widgets.append(help_label)
        self._grid_rows[name] = widgets

    def _build_engine_row(self) -> list[str]:
        """The engines that can run this model (not-installed ones shown, disabled); returns them."""
        self.engine_combo = QComboBox()
        self.engine_combo.setAccessibleName("Engine")
        engines = list(self._selection.eligible)
        if self._selection.engine and self._selection.engine not in engines:
            engines.insert(0, self._selection.engine)
        for e in engines:
            ok = self._installed.get(e, False)
            self.engine_combo.addItem(LABELS[e] + ("" if ok else " (not installed)"), e)
            if not ok:
                self.engine_combo.model().item(self.engine_combo.count() - 1).setEnabled(False)
        self.engine_reason = muted_label()
        self._add_grid_row("engine", "&Engine", self.engine_combo, self.engine_reason)
        return engines

    def _build_size_rows(self) -> None:
        """Context size and parallel slots, with what each slot then holds."""
        self.ctx_spin = QSpinBox()
        self.ctx_spin.setRange(256, 4 * 1024 * 1024)
        self.ctx_spin.setSingleStep(1024)
        self.ctx_spin.setGroupSeparatorShown(True)
        self.ctx_spin.setSuffix(" tokens")
        self.ctx_spin.setAccessibleName("Context size")
        self.parallel_spin = QSpinBox()
        self.parallel_spin.setRange(1, 256)
        self.parallel_spin.setAccessibleName("Parallel slots")
        self.ctx_help = muted_label()
        self._add_grid_row("n_ctx", "&Context size", self.ctx_spin)
        self._add_grid_row("n_parallel", "&Parallel slots", self.parallel_spin, self.ctx_help)

    def _build_gpu_layers_row(self) -> None:
        """GPU layers (llama.cpp): Auto, or a number; the estimate goes under it."""
        self.auto_layers = QCheckBox("Auto")
        self.auto_layers.setChecked(True)
        self.auto_layers.setToolTip("Ember estimates how many layers fit on your GPUs")
        self.layers_spin = QSpinBox()
        self.layers_spin.setRange(0, max(1, (self.spec.block_count or 0) + 1))
        self.layers_spin.setAccessibleName("GPU layers")
        self.layers_spin.setEnabled(False)
        layers_field = QWidget()
        layers_line = QHBoxLayout(layers_field)
        layers_line.setContentsMargins(0, 0, 0, 0)
        layers_line.addWidget(self.auto_layers)
        layers_line.addWidget(self.layers_spin, 1)
        layers_field.setFocusProxy(self.auto_layers)
        self.estimate_label = muted_label("Estimating\u2026", wrap=False)
        self.estimate_label.setAccessibleName("GPU layer estimate")
        self._add_grid_row(GPU_LAYERS_KEY, "&GPU layers", layers_field, self.estimate_label)

    def _build_sampling_rows(self) -> None:
        self.temp_spin = QDoubleSpinBox()
        self.temp_spin.setRange(0.0, 5.0)
        self.temp_spin.setSingleStep(0.05)
        self.temp_spin.setDecimals(2)
        self.temp_spin.setAccessibleName("Temperature")
        self.top_p_spin = QDoubleSpinBox()
        self.top_p_spin.setRange(0.0, 1.0)
        self.top_p_spin.setSingleStep(0.01)
        self.top_p_spin.setDecimals(2)
        self.top_p_spin.setAccessibleName("Top P")
        self.top_k_spin = QSpinBox()
        self.top_k_spin.setRange(0, 100000)
        self.top_k_spin.setAccessibleName("Top K")
        self._add_grid_row("temp", "&Temperature", self.temp_spin)
        self._add_grid_row("top_p", "Top &P", self.top_p_spin)
        self._add_grid_row("top_k", "Top &K", self.top_k_spin)
        self._widgets = {"n_ctx": self.ctx_spin, "n_parallel": self.parallel_spin, "temp": self.temp_spin,
                         "top_p": self.top_p_spin, "top_k": self.top_k_spin}

    def _build_advanced(self, root: QVBoxLayout) -> None:
        """Any engine parameter as ``key = value`` rows, folded away until wanted."""
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced: any engine parameter as key = value")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.RightArrow)
        self.advanced_toggle.setAutoRaise(True)
        root.addWidget(self.advanced_toggle)
        self.advanced_box = QFrame()
        self.advanced_box.setFrameShape(QFrame.StyledPanel)
        adv = QVBoxLayout(self.advanced_box)
        adv.setSpacing(6)
        self.advanced_hint = muted_label("One setting per row in dot notation, for example "
                                         "sampling.min_p = 0.05. `ember params` lists them all.")
        adv.addWidget(self.advanced_hint)
        self._rows_layout = QVBoxLayout()
        self._rows_layout.setSpacing(6)
        adv.addLayout(self._rows_layout)
        self.add_row_button = QPushButton("Add row")
        add_line = QHBoxLayout()
        add_line.addWidget(self.add_row_button)
        add_line.addStretch(1)
        adv.addLayout(add_line)
        self.advanced_box.hide()
        root.addWidget(self.advanced_box)

    def _build_footer(self, root: QVBoxLayout) -> None:
        """The plan's warnings and problems, then Launch, Cancel and Reset."""
        self.warnings_label = QLabel()
        self.warnings_label.setWordWrap(True)
        self.warnings_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.warnings_label.hide()
        root.addWidget(self.warnings_label)
        self.problem_label = error_label()
        root.addWidget(self.problem_label)
        root.addStretch(1)
        self.buttons = QDialogButtonBox()
        self.launch_button = primary_button("Launch")
        self.launch_button.setDefault(True)
        self.buttons.addButton(self.launch_button, QDialogButtonBox.AcceptRole)
        self.buttons.addButton(QDialogButtonBox.Cancel)
        self.reset_button = self.buttons.addButton("Reset to defaults", QDialogButtonBox.ResetRole)
        root.addWidget(self.buttons)

    def _restore_choices(self, prefs: model_prefs.ModelPrefs | None, engines: list[str]) -> None:
        """Remembered choices, else the selection's engine and the defaults."""
        engine = prefs.engine if prefs and prefs.engine in engines and self._installed.get(prefs.engine) else \
            self._selection.engine
        idx = self.engine_combo.findData(engine)
        self.engine_combo.setCurrentIndex(max(idx, 0))
        self._set_engine(self.engine_combo.currentData(), prefs)
        rows = list(prefs.advanced) if prefs else []
        if prefs and prefs.engine == self.engine:  # saved values without a field here (a fix's, say): rows
            shown = {k for k in self._field_keys.values() if k} | {self._gpu_key}
            rows = [(k, _typed(v)) for k, v in prefs.params.items() if k not in shown] + rows
        for k, v in rows:
            self.add_advanced_row(k, v)
        if rows:
            self.advanced_toggle.setChecked(True)
            self._toggle_advanced(True)
        if not self.rows:
            self.add_advanced_row()

    def _connect_fields(self) -> None:
        self.engine_combo.currentIndexChanged.connect(lambda _i: self._set_engine(self.engine_combo.currentData()))
        for w in (self.ctx_spin, self.parallel_spin, self.layers_spin):
            w.valueChanged.connect(self._changed)
        for w in (self.temp_spin, self.top_p_spin, self.top_k_spin):
            w.valueChanged.connect(self._changed)
        self.auto_layers.toggled.connect(self._auto_toggled)
        self.advanced_toggle.toggled.connect(self._toggle_advanced)
        self.add_row_button.clicked.connect(lambda: self.add_advanced_row().key_edit.setFocus())
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.reset_button.clicked.connect(self.reset_to_defaults)

    # -- engine and fields ------------------------------------------------------------
    @property
    def engine(self) -> str | None:
        return self.engine_combo.currentData()

    def _set_engine(self, engine: str | None, prefs: model_prefs.ModelPrefs | None = None) -> None:
        self._schema, self._backend = {}, None
        problem = None
        if engine is None:
            problem = launch.PlanError(self.spec.name, self._selection.reasons).message
        else:
            try:
                self._backend = backends.get(engine)
                self._schema = dict(self._backend.schema())
            except Exception as exc:  # a backend module missing or broken: say so, do not crash
                problem = f"The {LABELS.get(engine, engine)} engine cannot be used: {_problem_text(exc)}"
        self.engine_reason.setText(self._selection.reasons.get(engine, "") if engine else "")
        self._plan_problem = problem
        keys = sorted(self._schema)
        for row in self.rows:
            row.key_edit.completer().model().setStringList(keys)
        # Which common fields this engine has, under which key.
        trained = self.spec.context_length or units.DEFAULT_N_CTX
        values = dict(prefs.params) if prefs else {}
        roles = self._backend.roles if self._backend is not None else None
        for fd in FIELDS:
            if fd.role:
                key = roles.key(fd.role) if roles is not None else None
                key = key if key in self._schema else None
            else:
                key = next((k for k in fd.keys if k in self._schema), None)
            self._field_keys[fd.name] = key
            w = self._widgets[fd.name]
            self._set_row_visible(fd.name, key is not None)
            if key is None:
                continue
            default = self._schema[key].default
            if fd.name == "n_ctx":
                default = min(units.DEFAULT_N_CTX, trained)
            value = values.get(key, default)
            try:
                w.blockSignals(True)
                w.setValue(int(value) if fd.kind == "int" else float(value))
            except (TypeError, ValueError):
                pass
            finally:
                w.blockSignals(False)
        self._gpu_key = roles.gpu_layers if roles is not None and roles.gpu_layers in self._schema else None
        self._set_row_visible(GPU_LAYERS_KEY, self._gpu_key is not None)
        if prefs is not None:
            self.auto_layers.setChecked(prefs.auto_gpu_layers)
            if not prefs.auto_gpu_layers and self._gpu_key in prefs.params:
                self.layers_spin.setValue(int(prefs.params[self._gpu_key]))
        self.layers_spin.setEnabled(not self.auto_layers.isChecked())
        label = LABELS.get(engine, "engine") if engine else "engine"
        self.advanced_toggle.setText(f"Advanced: any {label} parameter as key = value")
        if hasattr(self, "_debounce"):
            self._changed()

    def _set_row_visible(self, name: str, visible: bool) -> None:
        for w in self._grid_rows.get(name, []):
            w.setVisible(visible)

    def reset_to_defaults(self) -> None:
        for row in list(self.rows):
            self._remove_row(row)
        self.add_advanced_row()
        self.auto_layers.setChecked(True)
        self.engine_combo.blockSignals(True)
        self.engine_combo.setCurrentIndex(max(0, self.engine_combo.findData(self._selection.engine)))
        self.engine_combo.blockSignals(False)
        self._set_engine(self.engine, None)

    def focus_key(self, key: str | None, replacing: str | None = None) -> QWidget | None:
        """Open at one parameter (a diagnosis' "edit parameters" fix): its field, or its advanced row
        (made for it, or the row of ``replacing``, the key it corrects, renamed), focused and said above."""
        if not key:
            return None
        widget: QWidget | None = None
        for fd in FIELDS:
            if self._field_keys.get(fd.name) == key:
                widget = self._widgets[fd.name]
        if widget is None and key == self._gpu_key:
            self.auto_layers.setChecked(False)
            widget = self.layers_spin
        if widget is None:
            row = next((r for r in self.rows if r.pair()[0] in (key, replacing) and r.pair()[0]), None)
            row = row or next((r for r in self.rows if r.is_empty()), None) or self.add_advanced_row()
            row.key_edit.setText(key)
            self._toggle_advanced(True)
            widget = row.value_edit
        self.focus_hint.setText(f"The fix: set {key} below, then Launch.")
        self.focus_hint.show()
        widget.setFocus()
        if hasattr(widget, "selectAll"):
            widget.selectAll()
        return widget

    # -- advanced rows -------------------------------------------------------------------
    def add_advanced_row(self, key: str = "", value: str = "") -> AdvancedRow:
        row = AdvancedRow(sorted(self._schema), key, value)
        row.changed.connect(self._changed)
        row.remove_requested.connect(self._remove_row)
        self.rows.append(row)
        self._rows_layout.addWidget(row)
        if hasattr(self, "_debounce"):
            self._changed()
        return row

    def _remove_row(self, row: AdvancedRow) -> None:
        if row in self.rows:
            self.rows.remove(row)
            self._rows_layout.removeWidget(row)
            row.deleteLater()
            self._changed()

    def _toggle_advanced(self, on: bool) -> None:
        self.advanced_toggle.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self.advanced_box.setVisible(on)
        if self.advanced_toggle.isChecked() != on:
            self.advanced_toggle.setChecked(on)

    def _auto_toggled(self, on: bool) -> None:
        self.layers_spin.setEnabled(not on)
        self._changed()

    # -- values and validation -------------------------------------------------------------
    def field_values(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for fd in FIELDS:
            key = self._field_keys.get(fd.name)
            if key is not None:
                v = self._widgets[fd.name].value()
                out[key] = round(v, 4) if fd.kind == "float" else int(v)
        if self._gpu_key is not None and not self.auto_layers.isChecked():
            out[self._gpu_key] = self.layers_spin.value()
        return out

    def advanced_pairs(self) -> list[tuple[str, str]]:
        return [r.pair() for r in self.rows if not r.is_empty()]

    def overrides(self) -> dict[str, object]:
        """Field values, then the advanced rows (which win for the same key)."""
        out = self.field_values()
        out.update(dict(self.advanced_pairs()))
        return out

    def _validate_rows(self) -> bool:
        ok = True
        fields = {self._field_keys[fd.name]: fd.label for fd in FIELDS if self._field_keys.get(fd.name)}
        seen: dict[str, AdvancedRow] = {}
        for row in self.rows:
            key, value = row.pair()
            problem = note = None
            if row.is_empty():
                pass
            elif not key:
                problem = "This row has a value but no parameter name (for example sampling.top_k)"
            elif self._backend is not None:
                try:
                    self._backend.validate({key: value})
                except P.ParamError as exc:
                    problem = exc.message
                except Exception as exc:
                    problem = _problem_text(exc)
                if problem is None:
                    if key in seen:
                        problem = f"{key} is set twice; remove one of the rows"
                    elif key in fields:
                        note = f"Replaces the {fields[key]} field above"
                    elif key == self._gpu_key:
                        note = "Replaces the GPU layers setting above"
            if key and problem is None:
                seen[key] = row
            row.set_problem(problem)
            row.set_note(note)
            ok = ok and problem is None
        return ok

    def _changed(self, *_args) -> None:
        valid = self._validate_rows()
        self._invalid = not valid
        if not valid and not self.advanced_box.isVisible():
            self._toggle_advanced(True)
        self._update_ctx_help()
        self._update_launch_enabled()
        QTimer.singleShot(0, self, self._fit_height)
        self._generation += 1  # whatever is in flight is stale now
        if valid and self._backend is not None:
            self.estimate_label.setText("Estimating\u2026")
            self._debounce.start()
        else:
            self._debounce.stop()
            self.estimate_label.setText("The estimate follows once the parameters below are valid")

    def _fit_height(self) -> None:
        """Never shorter than the content at this width.

        Wrapped labels make the layout height-for-width, and Qt does not raise a
        top-level window's minimum height for that: without this, an error message
        appearing would squash the spin boxes.
        """
        layout = self.layout()
        if layout is None:
            return
        layout.activate()
        need = layout.totalHeightForWidth(self.width()) if layout.hasHeightForWidth() else \
            layout.totalMinimumSize().height()
        need = max(need, layout.totalMinimumSize().height())
        if self.minimumHeight() != need:
            self.setMinimumHeight(need)
        if self.height() < need:
            self.resize(self.width(), need)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            QTimer.singleShot(0, self, self._fit_height)

    def _update_ctx_help(self) -> None:
        n_ctx, n_par = self.ctx_spin.value(), self.parallel_spin.value()
        text = f"Each of the {n_par} slots holds {n_ctx // max(1, n_par):,} tokens" if n_par > 1 else \
            "One conversation at a time, with the whole context"
        self.ctx_help.setText(text)

    def _update_launch_enabled(self) -> None:
        ok = not self._invalid and self._backend is not None and self._plan_problem is None
        self.launch_button.setEnabled(ok)
        self.problem_label.setText(self._plan_problem or "")
        self.problem_label.setVisible(bool(self._plan_problem))

    # -- the estimate (off the GUI thread) ----------------------------------------------
    def _estimate(self) -> None:
        if self._invalid or self._backend is None:
            return
        self._generation += 1
        gen = self._generation
        spec, hw, engine, overrides = self.spec, self.hw, self.engine, self.overrides()
        run_async(lambda: launch.plan(spec, hw, engine, overrides),
                  lambda p: self._estimated(gen, p, None), lambda e: self._estimated(gen, None, e),
                  name="launch-estimate", owner=self)

    def _estimated(self, gen: int, p: launch.LaunchPlan | None, exc: BaseException | None) -> None:
        if gen != self._generation:
            return  # the user changed something since
        if exc is not None:
            self._plan_problem = _problem_text(exc)
            self.estimate_label.setText("")
            self.warnings_label.hide()
        else:
            self._plan_problem = None
            self.show_plan(p)
        self._update_launch_enabled()
        self._fit_height()

    def show_plan(self, p: launch.LaunchPlan) -> None:
        if p.fit is not None:
            # One fact a line: wrapped text in a grid cell gets clipped (Qt's height-for-width).
            self.estimate_label.setText(p.fit.summary().replace("; ", "\n"))
            if self.auto_layers.isChecked():  # the greyed box shows what Auto chose
                self.layers_spin.blockSignals(True)
                self.layers_spin.setValue(min(p.fit.gpu_layers, self.layers_spin.maximum()))
                self.layers_spin.blockSignals(False)
        else:
            self.estimate_label.setText("")
        if p.warnings:
            self.warnings_label.setText("\n".join(f"\u26a0 {w}" for w in p.warnings))
            self.warnings_label.show()
        else:
            self.warnings_label.hide()

    def is_estimating(self) -> bool:
        return self._debounce.isActive() or self.estimate_label.text() == "Estimating\u2026"

    # -- accept ------------------------------------------------------------------------------
    def accept(self) -> None:
        if self._invalid or self._backend is None:
            return
        try:
            p = launch.plan(self.spec, self.hw, self.engine, self.overrides())
        except Exception as exc:  # PlanError, ParamError, ModelError: shown, the dialog stays
            self._plan_problem = _problem_text(exc)
            self._update_launch_enabled()
            return
        self._plan = p
        try:
            model_prefs.save(self.spec.name, model_prefs.ModelPrefs(
                engine=self.engine, params=self.field_values(), auto_gpu_layers=self.auto_layers.isChecked(),
                advanced=self.advanced_pairs()))
        except OSError as exc:
            log.warning("could not remember launch choices for %s: %s", self.spec.name, exc)
        super().accept()

    def plan(self) -> launch.LaunchPlan | None:
        """The accepted launch plan (None before Accept or after Cancel)."""
        return self._plan
