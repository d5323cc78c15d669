"""Shared fixtures. EMBER_HOME points at a temporary folder for the whole run, so the
suite never touches the user's models, settings or chats."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="ember-test-home-"))
os.environ["EMBER_HOME"] = str(_SESSION_HOME)
os.environ["EMBER_GATEWAY_PORT"] = "0"  # each app the suite starts serves its local API on a free port
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.pop("HF_TOKEN", None)


def cache_dir() -> Path:
    """Slow-to-build test material (converted models...) cached inside the checkout."""
    path = Path(os.environ.get("EMBER_TEST_CACHE", ROOT / ".cache" / "test"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def starter_path() -> Path:
    from engines.models import store
    return store.ensure_starter()


@pytest.fixture(scope="session")
def starter_spec(starter_path):
    from engines.models import store
    return store.resolve_local("starter")


@pytest.fixture
def fresh_home(tmp_path, monkeypatch, starter_path):
    """An empty EMBER_HOME with the starter model already in place (hard-linked, so fast)."""
    home = tmp_path / "home"
    monkeypatch.setenv("EMBER_HOME", str(home))
    from engines.models import store
    target = store.starter_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    for src in (starter_path, starter_path.with_name(starter_path.name + ".verified")):
        dst = target.parent / src.name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return home


@pytest.fixture(scope="session")
def hw():
    from engines.machine import hardware
    return hardware.detect()


@pytest.fixture(scope="module")
def starter_engine():
    """A real llama.cpp engine with the starter model, shared by a module's tests."""
    from engines.running import launch
    from engines.models import store
    store.ensure_starter()
    proc = launch.start(launch.plan("starter", overrides={"n_ctx": 2048}))
    yield proc
    proc.stop()


def ember_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engines.cli", *args]


@pytest.fixture(scope="session")
def xinference_cluster(tmp_path_factory):
    """A real Xinference supervisor + worker on loopback (auth on), once per test session; stopped cleanly.

    Skipped only when Xinference cannot be installed here (``make xinference`` says why)."""
    from tests import xinference_cluster as xc
    try:
        cluster = xc.start(tmp_path_factory.mktemp("xinference"))
    except xc.Unavailable as exc:
        pytest.skip(str(exc))
    yield cluster
    xc.stop(cluster)
