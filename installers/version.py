"""The one version: ``[project].version`` in pyproject.toml, read by every build step."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the [project] table's version line is enough
        section = text.split("[project]", 1)[1].split("\n[", 1)[0]
        match = re.search(r'^version\s*=\s*"([^"]+)"', section, re.M)
        if not match:
            raise ValueError(f"{pyproject}: no [project].version")
        return match.group(1)
    return tomllib.loads(text)["project"]["version"]


def debian_version(version: str) -> str:
    """PEP 440 pre-releases sort before the release in Debian only with a tilde (1.0rc1 -> 1.0~rc1)."""
    return re.sub(r"(\d)(a|b|rc|\.dev)(\d+)", r"\1~\2\3", version)
