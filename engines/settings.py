"""User preferences in one JSON file (config_dir()/settings.json), shared by CLI and desktop.

Written with write-then-rename so a crash never leaves half a file; an unreadable
file is kept aside (``settings.json.broken``) and the defaults are used, so a
damaged file never stops the app from starting.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from engines import paths, units

log = logging.getLogger(__name__)

DEFAULTS: dict[str, object] = {
    "idle_unload_minutes": 30,       # None = never unload
    "start_at_login": False,
    "default_n_ctx": units.DEFAULT_N_CTX,
    "reply_limit": 1024,   # tokens per reply in the chat window and `ember chat`; the raw API is left alone
    "stall_timeout_seconds": 300,    # an engine silent this long mid-reply (no token, no log line) is stopped
    "tray_notice_shown": False,      # "Ember keeps running in the tray" said once
    "last_model": None,
    "models_only_runnable": False,   # the models window's filters, as the user left them
    "models_sort": "fit",            # "fit" (fastest here first), "name" or "size"
    "models_search": "",
    "gateway_enabled": True,         # the desktop app serves the local API while it is open
    "gateway_port": 5731,            # the local API's fixed port (tools are configured with it once)
    "gateway_origins": [],           # web pages (origins) allowed to call the local API; none by default
    "gateway_lan": False,            # listen on the local network too (off: this computer only)
    "max_loaded_models": None,       # models the local API keeps loaded at once; None: as memory allows
}
ENGINE_PYTHON = "engine_python."   # engine_python.<engine>: the interpreter that runs that engine

_lock = threading.Lock()


def path() -> Path:
    return paths.config_dir() / "settings.json"


def load() -> dict[str, object]:
    """All settings: the defaults overlaid with what the user saved."""
    values = dict(DEFAULTS)
    p = path()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        values.update(data)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("settings file %s is unreadable (%s); using defaults", p, exc)
        try:
            p.replace(p.with_name(p.name + ".broken"))
        except OSError:
            pass
    return values


def get(key: str, default: object = None) -> object:
    return load().get(key, DEFAULTS.get(key, default) if default is None else default)


def update(changes: dict[str, object]) -> dict[str, object]:
    """Save some keys (None for a key without a default removes it); returns all settings."""
    with _lock:
        current = load()
        saved = {k: v for k, v in current.items() if k not in DEFAULTS or v != DEFAULTS[k]}
        for k, v in changes.items():
            if v is None and k not in DEFAULTS:
                saved.pop(k, None)
            else:
                saved[k] = v
        paths.atomic_write_text(path(), json.dumps(saved, indent=2, sort_keys=True) + "\n")
        current.update(changes)
        return current


def set(key: str, value: object) -> None:  # noqa: A001 - mirrors get()
    update({key: value})


def idle_timeout_seconds(values: dict[str, object] | None = None) -> float | None:
    """The manager's idle timeout from ``idle_unload_minutes`` (None or <= 0: never)."""
    minutes = (values or load()).get("idle_unload_minutes")
    try:
        minutes = float(minutes) if minutes is not None else None
    except (TypeError, ValueError):
        minutes = DEFAULTS["idle_unload_minutes"]
    return None if minutes is None or minutes <= 0 else minutes * 60.0


def engine_python(engine: str) -> str | None:
    """The interpreter the user chose for an engine (empty: Ember's own)."""
    value = load().get(ENGINE_PYTHON + engine)
    return str(value) if value else None
