"""Every model Ember can offer, with the engine and fit on a machine.

For now: the local models (starter and user-added files). The curated catalog
(resources/models.json) joins here.
"""
from __future__ import annotations

import logging

from . import fit as F, models, selection
from .backends import installed_engines
from .hardware import HardwareProfile

log = logging.getLogger(__name__)

FITS = ("gpu", "partial", "cpu", "none", "unavailable")


def row(spec: models.ModelSpec, hw: HardwareProfile, installed: dict[str, bool] | None = None) -> dict:
    """One model's line in `ember models --json` and the models window."""
    sel = selection.select(spec, hw, installed=installed if installed is not None else installed_engines())
    r = {"name": spec.name, "display_name": spec.display_name or spec.name, "format": spec.format,
         "quantization": spec.quantization, "architecture": spec.architecture, "engine": sel.engine,
         "fit": "unavailable", "gpu_layers": 0, "total_layers": (spec.block_count or 0) + 1,
         "reason": sel.reason, "size_bytes": spec.size_bytes, "local": spec.is_local, "source": spec.source,
         "reasons": sel.reasons}
    if sel.engine == "llamacpp" and spec.is_local:
        est = F.auto_ngl(spec.path, hw, min(4096, spec.context_length or 4096))
        r.update(fit=est.fit, gpu_layers=est.gpu_layers, total_layers=est.total_layers,
                 reason=f"{sel.reason}; {est.summary()}")
        if est.total_bytes > hw.ram_total_bytes + sum(g.memory_free_bytes for g in hw.llamacpp_gpus()):
            r["fit"] = "none"
    elif sel.engine is not None:
        r["fit"] = "gpu" if sel.engine in ("vllm", "sglang") else "cpu" if not hw.gpus else "gpu"
    return r


def rows(hw: HardwareProfile) -> list[dict]:
    installed = installed_engines()
    return [row(spec, hw, installed) for spec in models.local_models()]


def resolve(name: str) -> models.ModelSpec:
    """A catalog model by name; LookupError if there is none."""
    raise LookupError(name)
