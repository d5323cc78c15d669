"""Small helpers shared by the test folders."""
from __future__ import annotations

import os
import time
from pathlib import Path

from engines.running import supervisor

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hardware"  # hardware profiles (fakes with real shapes)


def screenshot_dir() -> Path:
    """Where the suite writes its screenshots: EMBER_SCREENSHOTS, default screenshots/ (the README's)."""
    path = Path(os.environ.get("EMBER_SCREENSHOTS", ROOT / "screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` (for another process or the X server) until it returns something true."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class StandInProcess:
    """What EngineManager uses of supervisor.EngineProcess: for tests of the manager's bookkeeping
    and events without an engine (real launches are in tests/integration and tests/desktop)."""

    base_url = "http://127.0.0.1:1"
    api_key = "key"

    def __init__(self):
        self.running = True

    def watch(self, on_exit) -> None:
        """A stand-in never ends by itself (crashes are tested with real engines)."""
        return None

    def stop(self) -> supervisor.Stop:
        self.running = False
        return supervisor.Stop.OK
