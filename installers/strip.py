"""Debug symbols out of the bundle, only where it is safe.

PyInstaller's own ``strip=True`` runs ``strip`` on every library, which breaks the ones
auditwheel rewrote with patchelf (numpy's vendored OpenBLAS fails with "ELF load command
address/offset not page-aligned"). So the spec collects unstripped and this strips, with
``strip --strip-debug``, the libraries that carry the weight and were never patched:
xllamacpp's llama.cpp library (about 80 MB of debug info), libpython and its extension modules.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

#: Bundle-relative (under _internal/) prefixes of files to strip.
STRIP_PREFIXES = ("xllamacpp/", "libpython3", "python3.")


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def strip_targets(internal: Path) -> list[Path]:
    out = []
    for p in sorted(internal.rglob("*")):
        rel = p.relative_to(internal).as_posix()
        if p.is_file() and not p.is_symlink() and rel.startswith(STRIP_PREFIXES) and is_elf(p):
            out.append(p)
    return out


def strip_debug(internal: Path, strip: str = "strip") -> tuple[int, int]:
    """Strip debug info in place; returns (bytes before, bytes after) of the stripped files."""
    if not shutil.which(strip):
        raise FileNotFoundError(f"`{strip}` not found: install binutils (or build with EMBER_STRIP=0)")
    before = after = 0
    for p in strip_targets(internal):
        before += p.stat().st_size
        subprocess.run([strip, "--strip-debug", str(p)], check=True)
        after += p.stat().st_size
    log.info("stripped debug info: %.0f MB -> %.0f MB", before / 1e6, after / 1e6)
    return before, after
