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
    def from_dict(cls, data: object, source: str = "") -> "HardwareProfile":
        """A profile from its JSON form, every field checked; :class:`ProfileError` names the field at fault."""
        if not isinstance(data, dict):
            raise ProfileError(source, "", f"must be a JSON object like `ember doctor --json` writes, not "
                                           f"{_json_kind(data)}")
        for key in REQUIRED:
            if key not in data:
                raise ProfileError(source, key, "is missing")
        values = {}
        for key, check in FIELDS.items():
            if key in data:
                values[key] = check(source, key, data[key])
        if values["ram_available_bytes"] > values["ram_total_bytes"]:
            raise ProfileError(source, "ram_available_bytes", f"({values['ram_available_bytes']:,}) cannot be more "
                                                              f"than ram_total_bytes ({values['ram_total_bytes']:,})")
        gpus = data.get("gpus", [])
        if not isinstance(gpus, list):
            raise ProfileError(source, "gpus", f"must be a list of GPUs, not {_json_kind(gpus)}")
        for i, g in enumerate(gpus):
            if not isinstance(g, dict):
                raise ProfileError(source, f"gpus[{i}]", f"must be an object describing a GPU, not {_json_kind(g)}")
        values["gpus"] = [_gpu(source, f"gpus[{i}]", g) for i, g in enumerate(_with_devices(gpus))]
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HardwareProfile":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(str(path), "", f"cannot be read: {getattr(exc, 'strerror', None) or exc}") from exc
        except json.JSONDecodeError as exc:
            raise ProfileError(str(path), "", f"is not JSON: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("hardware"), dict):
            data = data["hardware"]  # accept `ember doctor --json` output as is
        return cls.from_dict(data, str(path))


class ProfileError(ValueError):
    """A hardware profile Ember cannot use: the file, the field at fault and what is wrong with it."""

    def __init__(self, source: str, field: str, problem: str):
        self.source, self.field, self.problem = source, field, problem
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"hardware profile {self.source}" if self.source else "hardware profile"
        return f"{where}: {self.field + ' ' if self.field else ''}{self.problem}"


#: The most a profile may claim (1 EiB of memory, a million cores): beyond is a typo, not a machine.
MAX_BYTES = 2 ** 60
MAX_CORES = 1_000_000
BUILDS = ("cpu", "cuda", "metal", "vulkan", "rocm", "unknown")
REQUIRED = ("os", "arch", "cpu_cores", "ram_total_bytes", "ram_available_bytes")


def _json_kind(value: object) -> str:
    """What a JSON value is, in words (with the value itself when it is short: text or a number)."""
    kind = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
    shown = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return f"{kind} ({json.dumps(value)[:40]})" if shown else kind


def _choice(*allowed: str):
    def check(source: str, key: str, value: object) -> str:
        if value not in allowed:
            raise ProfileError(source, key, f"must be {', '.join(allowed[:-1])} or {allowed[-1]}, not "
                                            f"{json.dumps(value)[:40]}")
        return value
    return check


def _whole(low: int, high: int, what: str):
    def check(source: str, key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(source, key, f"must be a whole number of {what}, not {_json_kind(value)}")
        if value < low or value > high:
            raise ProfileError(source, key, f"must be between {low:,} and {high:,} {what}, not {value:,}")
        return value
    return check


def _text(source: str, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ProfileError(source, key, f"must be text, not {_json_kind(value)}")
    return value


def _flag(source: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ProfileError(source, key, f"must be true or false, not {_json_kind(value)}")
    return value


FIELDS = {
    "os": _choice("linux", "darwin", "windows"),
    "arch": _choice("x86_64", "arm64"),
    "cpu_cores": _whole(1, MAX_CORES, "cores"),
    "ram_total_bytes": _whole(1, MAX_BYTES, "bytes"),
    "ram_available_bytes": _whole(0, MAX_BYTES, "bytes"),
    "cpu_name": _text,
    "apple_silicon": _flag,
    "llamacpp_build": _choice(*BUILDS),
}


def _gpu(source: str, where: str, g: object) -> GPU:
    if not isinstance(g, dict):
        raise ProfileError(source, where, f"must be an object describing a GPU, not {_json_kind(g)}")
    for key in ("name", "vendor", "backend", "memory_total_bytes", "memory_free_bytes"):
        if key not in g:
            raise ProfileError(source, f"{where}.{key}", "is missing")
    name = _text(source, f"{where}.name", g["name"])
    vendor = _choice(*VENDORS)(source, f"{where}.vendor", g["vendor"])
    backend = _choice(*BACKENDS)(source, f"{where}.backend", g["backend"])
    total = _whole(1, MAX_BYTES, "bytes")(source, f"{where}.memory_total_bytes", g["memory_total_bytes"])
    free = _whole(0, MAX_BYTES, "bytes")(source, f"{where}.memory_free_bytes", g["memory_free_bytes"])
    if free > total:
        raise ProfileError(source, f"{where}.memory_free_bytes", f"({free:,}) cannot be more than "
                                                                f"memory_total_bytes ({total:,})")
    device = g.get("llamacpp_device")
    if device is not None and not isinstance(device, str):
        raise ProfileError(source, f"{where}.llamacpp_device", f"must be text or null, not {_json_kind(device)}")
    return GPU(name, vendor, backend, total, free, device)


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
