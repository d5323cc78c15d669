"""How fast a model will write on a machine: an estimate in tokens per second.

Writing a token reads every weight the token uses once, so the speed of a
model that fits is set by memory bandwidth: tokens/s = bandwidth / bytes read
per token. The bandwidths below are round figures for what llama.cpp reaches
in practice, not measurements of this machine; every result says it is an
estimate. Good enough to rank models and to tell a usable speed from a crawl
(a 16 GB model on a 2-core laptop writes about one token a second).

Measured here for scale: the 253 MB starter on 2 cores writes 80-90 tokens/s;
the estimate says about 50 (small models partly run from the CPU cache).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from engines.machine.hardware import GPU, HardwareProfile

log = logging.getLogger(__name__)

#: Bandwidth one CPU core draws from RAM in llama.cpp's decode, and the most a desktop's
#: dual-channel memory gives all cores together (bytes/s).
CPU_BYTES_PER_CORE = 6e9
CPU_MAX_BYTES = 48e9
#: A discrete GPU's effective bandwidth, kept low (mid-range cards) so the estimate does not promise.
DISCRETE_GPU_BYTES = 400e9
#: Apple silicon's unified memory by chip tier (base M1-M4 about 100 GB/s).
APPLE_BYTES = {"ultra": 800e9, "max": 400e9, "pro": 200e9}
APPLE_BASE_BYTES = 100e9


@dataclass(frozen=True)
class SpeedEstimate:
    """Tokens per second a model is expected to write, and the figures behind it."""

    tokens_per_second: float
    bytes_per_token: int
    basis: str

    def summary(self) -> str:
        return f"about {self.tokens_per_second:,.0f} tokens/s on this computer (an estimate: {self.basis})"

    def to_dict(self) -> dict:
        return {"tokens_per_second": round(self.tokens_per_second, 1), "bytes_per_token": self.bytes_per_token,
                "basis": self.basis, "estimate": True}


def cpu_bandwidth(hw: HardwareProfile) -> float:
    return min(max(1, hw.cpu_cores) * CPU_BYTES_PER_CORE, CPU_MAX_BYTES)


def gpu_bandwidth(gpu: GPU, hw: HardwareProfile) -> float:
    if gpu.vendor == "apple" or gpu.backend == "metal":
        name = f"{gpu.name} {hw.cpu_name}".lower()
        return next((b for tier, b in APPLE_BYTES.items() if tier in name), APPLE_BASE_BYTES)
    return DISCRETE_GPU_BYTES


def estimate(weights_bytes: int, hw: HardwareProfile, gpu_share: float = 0.0,
             active_share: float = 1.0) -> SpeedEstimate:
    """Decode speed for ``weights_bytes`` of weights, ``gpu_share`` of them on the GPUs.

    ``active_share``: the part of the weights one token reads (a mixture-of-experts
    model's active parameters over its total).
    """
    per_token = int(weights_bytes * min(1.0, max(0.0, active_share)))
    gpus = [g for g in hw.gpus if g.usable_by_llamacpp] or hw.gpus
    share = min(1.0, max(0.0, gpu_share)) if gpus else 0.0
    cpu_bw = cpu_bandwidth(hw)
    seconds = per_token * (1 - share) / cpu_bw
    parts = []
    if share < 1:
        parts.append(f"{cpu_bw / 1e9:,.0f} GB/s from RAM on {hw.cpu_cores} CPU cores")
    if share > 0:
        gpu_bw = min(gpu_bandwidth(g, hw) for g in gpus)  # layers wait for the slowest device
        seconds += per_token * share / gpu_bw
        parts.append(f"{gpu_bw / 1e9:,.0f} GB/s on the GPU for {share:.0%} of the weights")
    tps = 1 / seconds if seconds > 0 else 0.0
    basis = f"{per_token / 1e9:,.1f} GB read per token; " + ", ".join(parts)
    return SpeedEstimate(tps, per_token, basis)


def estimate_row(row: dict, hw: HardwareProfile, active_share: float = 1.0) -> SpeedEstimate | None:
    """The estimate for a row of ``ember models --json``; None when it does not run here or lacks sizes."""
    weights = row.get("weights_bytes")
    if row.get("fit") not in ("gpu", "partial", "cpu") or not weights:
        return None
    if row["fit"] == "gpu":
        share = 1.0
    elif row["fit"] == "partial" and row.get("total_layers"):
        share = (row.get("gpu_layers") or 0) / row["total_layers"]
    else:
        share = 0.0
    return estimate(int(weights), hw, share, active_share)
