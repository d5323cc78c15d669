"""One memory arithmetic, checked against llama.cpp itself: the starter launched at several
contexts, slot counts and cache types; the numbers Ember says before the launch (the launch
dialog's plan, the models window's row, the diagnosis' estimate) against what llama.cpp's
start-up log reports (its model, KV and compute buffers).

The KV cache must match within 10 % (it matches to the byte: llama.cpp's cell rules are
copied); the whole launch too (the compute buffers are an estimate, and on the CPU llama.cpp
adds a repacked copy of some weights, CPU_REPACK, that Ember does not count)."""
from __future__ import annotations

import pytest

from engines import units
from engines.machine import hardware
from engines.models import catalog
from engines.running import backends, launch

pytestmark = pytest.mark.slow

LAUNCHES = [  # (n_ctx, n_parallel, cache type)
    (256, 1, "f16"), (2048, 1, "f16"), (4096, 1, "f16"), (8192, 1, "f16"), (1000, 3, "f16"), (2048, 1, "q8_0"),
]


@pytest.fixture(scope="module")
def measured(starter_path):
    """Each launch: Ember's estimate before it, llama.cpp's report after it."""
    hw = hardware.detect()
    out = {}
    for n_ctx, slots, cache in LAUNCHES:
        overrides = {"n_ctx": n_ctx, "n_parallel": slots, "cache_type_k": cache, "cache_type_v": cache}
        plan = launch.plan("starter", hw, overrides=overrides)
        proc = launch.start(plan)
        try:
            out[(n_ctx, slots, cache)] = (plan, proc.meta["loaded"])
        finally:
            proc.stop()
    rows = ["n_ctx  slots cache | KV est / log (MiB) | compute est / log | total est / log"]
    for (n_ctx, slots, cache), (plan, loaded) in out.items():
        est = plan.fit
        log_total = sum(loaded.model_buffers_mib.values()) + loaded.kv_cache_mib + sum(loaded.compute_buffers_mib.values())
        rows.append(f"{n_ctx:>5} {slots:>5} {cache:>5} | {est.kv_cache_bytes / units.MIB:8.2f} / {loaded.kv_cache_mib:8.2f} |"
                    f" {est.compute_bytes / units.MIB:6.2f} / {sum(loaded.compute_buffers_mib.values()):6.2f} |"
                    f" {est.needs_bytes / units.MIB:7.1f} / {log_total:7.1f}")
    print("\n" + "\n".join(rows))
    return out


@pytest.mark.parametrize("launched", LAUNCHES, ids=lambda x: "-".join(map(str, x)))
def test_the_estimate_is_within_ten_percent_of_llamacpps_log(measured, launched):
    plan, loaded = measured[launched]
    est = plan.fit
    assert loaded.kv_cache_mib > 0
    assert est.kv_cache_bytes / units.MIB == pytest.approx(loaded.kv_cache_mib, rel=0.10)
    assert est.n_ctx == loaded.n_ctx  # llama.cpp's rounding of the context, foreseen
    compute = sum(loaded.compute_buffers_mib.values())
    assert est.compute_bytes / units.MIB == pytest.approx(compute, rel=0.10)
    log_total = sum(loaded.model_buffers_mib.values()) + loaded.kv_cache_mib + compute
    assert est.needs_bytes / units.MIB == pytest.approx(log_total, rel=0.10)


def test_the_windows_and_the_diagnosis_say_the_same_numbers(measured, starter_spec):
    """The launch dialog (the plan), the models window (the catalog row) and the diagnosis' estimate
    (Engine.memory_estimate) all come from the one arithmetic: the same bytes for the same launch."""
    hw = hardware.detect()
    plan, loaded = measured[(4096, 1, "f16")]
    row = next(r for r in catalog.rows(hw) if r["name"] == "starter")
    assert row["n_ctx"] == 4096
    assert row["kv_cache_bytes"] == plan.fit.kv_cache_bytes
    assert row["needs_bytes"] == plan.fit.needs_bytes
    assert f"KV cache {units.size(plan.fit.kv_cache_bytes)} at 4,096 tokens" in row["reason"]
    diagnosis = backends.get("llamacpp").memory_estimate(measured[(256, 1, "f16")][0], 4096)
    assert diagnosis.kv_cache_bytes == plan.fit.kv_cache_bytes
    assert units.size(diagnosis.kv_cache_bytes) == units.size(loaded.kv_cache_mib * units.MIB)
