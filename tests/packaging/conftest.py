"""One PyInstaller build per test session, shared by every packaging test.

The onedir bundle and the Linux artefacts are built once into ``.cache/test/packaging/<key>``,
the key hashing every source that goes into them (engines, desktop, resources, installers,
pyproject.toml, PyInstaller and Python versions); a later run with the same sources reuses
them, a changed source rebuilds. Older keys are deleted so the cache holds one build.

The frozen app runs in a clean environment (``env -i``): HOME, PATH=/usr/bin:/bin, a fresh
EMBER_HOME; no virtualenv, no PYTHONPATH. The starter model is not in the bundle (it would
add 253 MB); like a user after the first run, the test home holds the assembled GGUF and its
``.verified`` stamp in the models folder.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, cache_dir

from installers import build, linux
from installers.version import project_version

SOURCES = ("engines", "desktop", "resources", "installers")
#: The build alone takes 30-90 s on 2 cores, the .deb's xz another minute: far past the
#: suite's 300 s default when the machine is busy.
BUILD_TIMEOUT = 1500


_KEY: list[str] = []


def _source_key() -> str:
    """Computed once per session: other work may edit sources while the tests run."""
    if not _KEY:
        _KEY.append(_hash_sources())
    return _KEY[0]


def _hash_sources() -> str:
    import PyInstaller

    h = hashlib.sha256()
    h.update(f"{PyInstaller.__version__} {sys.version} {platform.machine()}".encode())
    files = [ROOT / "pyproject.toml"]
    for top in SOURCES:
        files += [p for p in (ROOT / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")]
    for p in sorted(files):
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _cached(name: str, make) -> Path:
    """Build ``name`` under the current key once; ``make(folder)`` returns the built path."""
    from filelock import FileLock

    base = cache_dir() / "packaging"
    base.mkdir(parents=True, exist_ok=True)
    key = _source_key()
    folder = base / key
    done = folder / f".{name}.done"
    with FileLock(str(base / ".lock")):
        for old in base.iterdir():
            if old.is_dir() and old.name != key:
                shutil.rmtree(old, ignore_errors=True)
        if done.exists():
            return Path(done.read_text())
        folder.mkdir(exist_ok=True)
        t0 = time.monotonic()
        path = make(folder)
        print(f"\npackaging: built {name} in {time.monotonic() - t0:.0f} s -> {path}")
        done.write_text(str(path))
        return path


@pytest.fixture(scope="session")
def version() -> str:
    return project_version()


@pytest.fixture(scope="session")
def bundle() -> Path:
    """The onedir bundle (``…/dist/ember``), built by the real spec with the real strip step."""
    def make(folder: Path) -> Path:
        dist, work = folder / "dist", folder / "work"
        shutil.rmtree(dist, ignore_errors=True)
        out = build.build_bundle(dist, work, strip=True)
        shutil.rmtree(work, ignore_errors=True)
        return out
    return _cached("bundle", make)


@pytest.fixture(scope="session")
def deb(bundle, version) -> Path:
    """The real .deb builder, at xz level 1 instead of 6: same files and metadata, a third of
    the compression time (xz -6 of 190 MB takes minutes on a busy 2-core machine)."""
    return _cached("deb", lambda folder: linux.build_deb(bundle, folder, version, ROOT / "resources",
                                                          platform.machine(), xz_level=1))


@pytest.fixture(scope="session")
def tarball(bundle, version) -> Path:
    return _cached("tarball", lambda folder: linux.build_tarball(bundle, folder, version, platform.machine()))


@pytest.fixture(scope="session")
def appimage_parts(bundle, version) -> tuple[Path, Path]:
    """(AppDir, squashfs): the AppImage minus the runtime this machine cannot download."""
    def make(folder: Path) -> Path:
        appdir, squashfs, _ = linux.build_appimage(bundle, folder, version, ROOT / "resources",
                                                   platform.machine(), runtime=None)
        return squashfs
    squashfs = _cached("appimage", make)
    return squashfs.with_suffix(".AppDir"), squashfs


@pytest.fixture
def user_home(tmp_path, starter_path) -> Path:
    """EMBER_HOME as after a first run: the starter GGUF and its stamp in the models folder."""
    home = tmp_path / "ember-home"
    target = home / "data" / "models" / "starter"
    target.mkdir(parents=True)
    for src in (starter_path, starter_path.with_name(starter_path.name + ".verified")):
        try:
            os.link(src, target / src.name)
        except OSError:
            shutil.copy2(src, target / src.name)
    return home


def clean_env(home: Path, **extra: str) -> dict:
    """What a user's double-click gets: no virtualenv, no Python variables."""
    env = {"HOME": str(home.parent), "PATH": "/usr/bin:/bin", "EMBER_HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def run_frozen(exe: Path, *args: str, home: Path, timeout: float = 120, **extra: str):
    return subprocess.run([str(exe), *args], env=clean_env(home, **extra), capture_output=True, text=True,
                          timeout=timeout, cwd=home.parent)
