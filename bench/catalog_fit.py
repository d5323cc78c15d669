"""Fit of the whole catalog on each hardware profile: first time and cached (target: under 100 ms cached).

Run: .venv/bin/python bench/catalog_fit.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.models import catalog
from engines.machine import hardware  # noqa: E402

TARGET_S = 0.100


def main() -> None:
    for f in sorted((ROOT / "tests" / "fixtures" / "hardware").glob("*.json")):
        hw = hardware.HardwareProfile.load(f)
        catalog.clear_cache()
        t0 = time.perf_counter()
        rows = catalog.catalog_rows(hw, installed=None)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(10):
            catalog.catalog_rows(hw, installed=None)
        again = (time.perf_counter() - t0) / 10
        print(f"{f.stem:<20} {len(rows)} variants  first {first * 1000:6.1f} ms  cached {again * 1000:6.2f} ms  "
              f"cached/target {again / TARGET_S:.3f}")


if __name__ == "__main__":
    main()
