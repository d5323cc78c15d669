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


def forget(model: str) -> bool:
    with _lock:
        data = _load_all()
        if data.pop(model, None) is None:
            return False
        paths.atomic_write_text(prefs_path(), json.dumps(data, indent=2, sort_keys=True))
        return True
