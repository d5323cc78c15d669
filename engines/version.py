"""Ember's version where package metadata is missing (frozen builds, a bare checkout).

A build writes the pyproject version into a ``VERSION`` file beside this module
(PyInstaller bundles it as data); a checkout reads pyproject.toml itself.
"""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _read() -> str:
    try:
        return (_HERE / "VERSION").read_text(encoding="utf-8").strip()
    except OSError:
        pass
    try:
        text = (_HERE.parent / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "0+unknown"
    section = text.split("[project]", 1)[-1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', section, re.M)
    return match.group(1) if match else "0+unknown"


VERSION = _read()


def version() -> str:
    """The installed distribution's version; the stamped or pyproject one without metadata."""
    try:
        return metadata.version("ember")
    except metadata.PackageNotFoundError:
        return VERSION
