"""What this computer has: OS, CPU, RAM and every GPU, with free memory.

The result is a :class:`HardwareProfile`, a plain dataclass that serializes to
JSON and loads back, so the rest of Ember (selection, fit, the CLI's
``--hardware FILE``) can reason about any machine, not only this one.

JSON form (``HardwareProfile.to_dict``)::

    {"os": "linux" | "darwin" | "windows",
     "arch": "x86_64" | "arm64",
     "cpu_name": "AMD EPYC", "cpu_cores": 16,
     "ram_total_bytes": 34359738368, "ram_available_bytes": 30000000000,
     "apple_silicon": false,
     "llamacpp_build": "cpu" | "cuda" | "metal" | "vulkan" | "rocm" | "unknown",
     "gpus": [{"name": "NVIDIA GeForce RTX 4090", "vendor": "nvidia",
               "backend": "cuda", "memory_total_bytes": 25757220864,
               "memory_free_bytes": 24000000000,
               "llamacpp_device": "CUDA0" | null}]}

``llamacpp_device`` is the name under which the installed llama.cpp build
sees the GPU; ``null`` means the GPU exists but this build cannot use it.
A profile written by hand may leave the key out: such a GPU is taken as
usable by a llama.cpp build for its backend, named as llama.cpp names it
(``CUDA0``, ``CUDA1``, ... in order; ``Metal``), so "what would run on that
machine?" has an answer. ``ember doctor --json`` always writes the key.
"""
from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

VENDORS = ("nvidia", "amd", "apple", "intel")
BACKENDS = ("cuda", "rocm", "metal", "vulkan")


@dataclass
class GPU:
    name: str
    vendor: str
    backend: str
    memory_total_bytes: int
    memory_free_bytes: int
    llamacpp_device: str | None = None

    @property
    def usable_by_llamacpp(self) -> bool:
        return self.llamacpp_device is not None


@dataclass
class HardwareProfile:
    os: str
    arch: str
    cpu_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: list[GPU] = field(default_factory=list)
    cpu_name: str = ""
    apple_silicon: bool = False
    llamacpp_build: str = "unknown"

    @property
    def has_cuda(self) -> bool:
        return any(g.backend == "cuda" for g in self.gpus)

    @property
    def is_mac_arm(self) -> bool:
        return self.os == "darwin" and self.arch == "arm64"

    def llamacpp_gpus(self) -> list[GPU]:
        """GPUs the installed llama.cpp build can offload to."""
        return [g for g in self.gpus if g.usable_by_llamacpp]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "HardwareProfile":
        try:
            gpus = [GPU(**g) for g in _with_devices(data.get("gpus", []))]
            known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "gpus"}
            profile = cls(gpus=gpus, **known)
        except TypeError as exc:
            raise ValueError(f"not a hardware profile: {exc}") from exc
        profile._check()
        return profile

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HardwareProfile":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read hardware file {path}: {exc}") from exc
        if "hardware" in data and isinstance(data["hardware"], dict):
            data = data["hardware"]  # accept `ember doctor --json` output as is
        return cls.from_dict(data)

    def _check(self) -> None:
        if self.os not in ("linux", "darwin", "windows"):
            raise ValueError(f"os must be linux, darwin or windows, not {self.os!r}")
        if self.arch not in ("x86_64", "arm64"):
            raise ValueError(f"arch must be x86_64 or arm64, not {self.arch!r}")
        for g in self.gpus:
            if g.vendor not in VENDORS:
                raise ValueError(f"gpu vendor must be one of {', '.join(VENDORS)}, not {g.vendor!r}")
            if g.backend not in BACKENDS:
                raise ValueError(f"gpu backend must be one of {', '.join(BACKENDS)}, not {g.backend!r}")


#: How llama.cpp names the devices of each backend (ggml's backend registry).
DEVICE_PREFIX = {"cuda": "CUDA", "rocm": "ROCm", "vulkan": "Vulkan", "metal": "Metal"}


def _with_devices(gpus: list[dict]) -> list[dict]:
    """GPU dicts with ``llamacpp_device`` filled in where a hand-written profile left it out.

    Counted per backend in file order, as llama.cpp enumerates them (``CUDA0``,
    ``CUDA1``; Metal has one device, ``Metal``). An explicit null stays null.
    """
    seen: dict[str, int] = {}
    out = []
    for g in gpus:
        if not isinstance(g, dict):
            raise TypeError(f"a GPU must be an object, not {g!r}")
        backend = str(g.get("backend", ""))
        index = seen.get(backend, 0)
        seen[backend] = index + 1
        if "llamacpp_device" not in g and backend in DEVICE_PREFIX:
            prefix = DEVICE_PREFIX[backend]
            g = {**g, "llamacpp_device": prefix if backend == "metal" else f"{prefix}{index}"}
        out.append(g)
    return out


def _os_name() -> str:
    s = platform.system().lower()
    return {"linux": "linux", "darwin": "darwin", "windows": "windows"}.get(s, s)


def _arch() -> str:
    m = platform.machine().lower()
    return "arm64" if m in ("arm64", "aarch64") else "x86_64" if m in ("x86_64", "amd64") else m


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def llamacpp_devices() -> list[dict]:
    """Devices as the installed xllamacpp sees them (its own dicts)."""
    try:
        import xllamacpp  # loads llama.cpp (50 MB); engine environments run this module without it
    except ImportError:
        return []
    try:
        return list(xllamacpp.get_device_info())
    except Exception as exc:  # a broken driver must not stop Ember from starting
        log.warning("xllamacpp.get_device_info failed: %s", exc)
        return []


def _device_type(dev: dict) -> str:
    t = dev.get("type")
    return str(getattr(t, "name", t)).upper()


def _backend_of(dev_name: str) -> str | None:
    n = dev_name.lower()
    for prefix, backend in (("cuda", "cuda"), ("rocm", "rocm"), ("hip", "rocm"), ("metal", "metal"),
                            ("mtl", "metal"), ("vulkan", "vulkan")):
        if n.startswith(prefix):
            return backend
    return None


def _vendor_of(description: str, backend: str) -> str:
    d = description.lower()
    if backend == "cuda" or "nvidia" in d or "geforce" in d or "rtx" in d:
        return "nvidia"
    if backend == "metal" or "apple" in d:
        return "apple"
    if backend == "rocm" or "amd" in d or "radeon" in d:
        return "amd"
    return "intel"


def _nvml_gpus() -> list[GPU]:
    """NVIDIA GPUs through NVML, so CUDA is known even with a CPU-only llama.cpp."""
    try:
        import pynvml  # optional (the "nvidia" extra)
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []  # no driver: no NVIDIA GPU to speak of
    gpus = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(GPU(name=name.decode() if isinstance(name, bytes) else name, vendor="nvidia",
                            backend="cuda", memory_total_bytes=int(mem.total), memory_free_bytes=int(mem.free)))
    except Exception as exc:
        log.warning("NVML query failed: %s", exc)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return gpus


def gpus_from_devices(devices: list[dict]) -> list[GPU]:
    """GPUs from xllamacpp's device dicts (CPU entries dropped)."""
    gpus = []
    for dev in devices:
        if _device_type(dev).endswith("CPU"):
            continue
        backend = _backend_of(str(dev.get("name", "")))
        if backend is None:
            continue
        desc = str(dev.get("description") or dev.get("name"))
        gpus.append(GPU(name=desc, vendor=_vendor_of(desc, backend), backend=backend,
                        memory_total_bytes=int(dev.get("memory_total", 0)),
                        memory_free_bytes=int(dev.get("memory_free", 0)),
                        llamacpp_device=str(dev.get("name"))))
    return gpus


def merge_gpus(llama: list[GPU], nvml: list[GPU]) -> list[GPU]:
    """One entry per physical GPU: llama.cpp's view, plus NVML GPUs it cannot see."""
    merged = list(llama)
    llama_cuda = [g for g in llama if g.backend == "cuda"]
    for i, g in enumerate(nvml):
        if i < len(llama_cuda):
            continue  # llama.cpp enumerates CUDA devices in NVML order
        merged.append(g)
    return merged


def _build_of(devices: list[dict]) -> str:
    for dev in devices:
        b = _backend_of(str(dev.get("name", "")))
        if b:
            return b
    return "cpu" if devices else "unknown"


def detect() -> HardwareProfile:
    """Detect this machine. Cheap enough to call before each launch."""
    vm = psutil.virtual_memory()
    os_name, arch = _os_name(), _arch()
    devices = llamacpp_devices()
    gpus = merge_gpus(gpus_from_devices(devices), _nvml_gpus())
    apple = os_name == "darwin" and arch == "arm64"
    if apple and not any(g.vendor == "apple" for g in gpus):
        # Unified memory: the GPU can use most of RAM (Metal's recommended working set is ~75%).
        gpus.append(GPU(name="Apple silicon GPU", vendor="apple", backend="metal",
                        memory_total_bytes=int(vm.total * 0.75), memory_free_bytes=int(vm.available * 0.75)))
    return HardwareProfile(
        os=os_name, arch=arch, cpu_name=_cpu_name(),
        cpu_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        ram_total_bytes=int(vm.total), ram_available_bytes=int(vm.available),
        gpus=gpus, apple_silicon=apple, llamacpp_build=_build_of(devices),
    )


def llamacpp_device_dicts(profile: HardwareProfile) -> list[dict]:
    """GPU list in the shape xllamacpp.memory.estimate_gpu_layers expects."""
    return [{"name": g.llamacpp_device or g.name, "memory_free": g.memory_free_bytes,
             "memory_total": g.memory_total_bytes} for g in profile.llamacpp_gpus()]
