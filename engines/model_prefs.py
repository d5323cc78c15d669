"""Launch choices remembered per model, so the launch dialog opens as the user left it.

One small JSON file under :func:`paths.config_dir`, written atomically
(write-then-rename), keyed by model name::

    {"starter": {"engine": "llamacpp",
                 "params": {"n_ctx": 2048, "sampling.top_k": 40},
                 "auto_gpu_layers": true,
                 "advanced": [["sampling.min_p", "0.05"]]}}

``params`` are values the dialog's fields produced; ``advanced`` keeps the
user's rows as typed (even invalid ones: nothing the user wrote is lost).
Qt-free, so the CLI may read the same choices.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engines import paths

log = logging.getLogger(__name__)
_lock = threading.Lock()


@dataclass
class ModelPrefs:
    engine: str | None = None
    params: dict[str, object] = field(default_factory=dict)
    auto_gpu_layers: bool = True
    advanced: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["advanced"] = [list(r) for r in self.advanced]
        return d

    def overrides(self) -> dict[str, object]:
        """What a start with these choices passes: the fields' values, then the advanced rows (which win)."""
        out = dict(self.params)
        out.update(dict(self.advanced))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelPrefs":
        params = data.get("params")
        advanced = data.get("advanced")
        return cls(
            engine=data.get("engine") if isinstance(data.get("engine"), str) else None,
            params=dict(params) if isinstance(params, dict) else {},
            auto_gpu_layers=bool(data.get("auto_gpu_layers", True)),
            advanced=[(str(r[0]), str(r[1])) for r in advanced or []
                      if isinstance(r, (list, tuple)) and len(r) == 2],
        )


def prefs_path() -> Path:
    return paths.config_dir() / "model_prefs.json"


def _load_all() -> dict[str, dict]:
    try:
        data = json.loads(prefs_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("remembered launch choices unreadable (%s); starting afresh", exc)
        return {}
    return data if isinstance(data, dict) else {}


def load(model: str) -> ModelPrefs | None:
    """The remembered choices for ``model``, or None if there are none."""
    entry = _load_all().get(model)
    return ModelPrefs.from_dict(entry) if isinstance(entry, dict) else None


def save(model: str, prefs: ModelPrefs) -> None:
    with _lock:
        data = _load_all()
        data[model] = prefs.to_dict()
        paths.atomic_write_text(prefs_path(), json.dumps(data, indent=2, sort_keys=True))


def remember(model: str, engine: str, changes: dict[str, object], carried: dict[str, object] | None = None,
             auto_gpu_layers: bool | None = None) -> ModelPrefs:
    """A fix's parameter changes kept as ``model``'s choices, so its next start (``launch.default_plan``) and
    the launch dialog use them.

    With the remembered engine, ``changes`` replace those keys (an advanced row of the same key goes: its
    value is now the fix's); with another engine the choices start afresh from ``carried`` (what carries
    over to it, the context say, in its own keys). ``auto_gpu_layers`` False: the fix chose the layers."""
    with _lock:
        data = _load_all()
        entry = data.get(model)
        prefs = ModelPrefs.from_dict(entry) if isinstance(entry, dict) else ModelPrefs(engine=engine)
        if prefs.engine not in (None, engine):
            prefs = ModelPrefs(engine=engine, params=dict(carried or {}))
        prefs.engine = engine
        prefs.params.update(changes)
        prefs.advanced = [(k, v) for k, v in prefs.advanced if k not in changes]
        if auto_gpu_layers is not None:
            prefs.auto_gpu_layers = auto_gpu_layers
        data[model] = prefs.to_dict()
        paths.atomic_write_text(prefs_path(), json.dumps(data, indent=2, sort_keys=True))
    log.info("remembered for %s (%s): %s", model, engine, changes)
    return prefs


def forget(model: str) -> bool:
    with _lock:
        data = _load_all()
        if data.pop(model, None) is None:
            return False
        paths.atomic_write_text(prefs_path(), json.dumps(data, indent=2, sort_keys=True))
        return True
