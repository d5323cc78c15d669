"""Where Ember keeps its files.

Everything lives under platformdirs' per-user folders, or under one folder
when ``EMBER_HOME`` is set (tests and portable installs use that).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import platformdirs

APP = "ember"


def _home() -> Path | None:
    value = os.environ.get("EMBER_HOME")
    return Path(value).expanduser() if value else None


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    home = _home()
    return _ensure(home / "data" if home else platformdirs.user_data_path(APP, appauthor=False))


def config_dir() -> Path:
    home = _home()
    return _ensure(home / "config" if home else platformdirs.user_config_path(APP, appauthor=False))


def log_dir() -> Path:
    home = _home()
    return _ensure(home / "logs" if home else platformdirs.user_log_path(APP, appauthor=False))


def models_dir() -> Path:
    return _ensure(data_dir() / "models")


def runtime_dir() -> Path:
    home = _home()
    if home:
        return _ensure(home / "run")
    return _ensure(Path(tempfile.gettempdir()) / f"ember-{os.getuid() if hasattr(os, 'getuid') else 'user'}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write-then-rename, so a crash never leaves a half-written settings file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
