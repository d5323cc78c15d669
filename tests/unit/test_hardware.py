import json

import pytest

from engines.machine import hardware
from engines.machine.hardware import HardwareProfile


def test_detect_reports_this_machine():
    hw = hardware.detect()
    assert hw.os in ("linux", "darwin", "windows") and hw.arch in ("x86_64", "arm64")
    assert hw.cpu_cores >= 1 and hw.ram_total_bytes >= hw.ram_available_bytes > 0
    assert hw.llamacpp_build in ("cpu", "cuda", "metal", "vulkan", "rocm")


def test_json_round_trip(tmp_path):
    hw = hardware.detect()
    hw.gpus.append(hardware.GPU("NVIDIA GeForce RTX 4090", "nvidia", "cuda", 25757220864, 24000000000, None))
    path = tmp_path / "hw.json"
    path.write_text(hw.to_json())
    again = HardwareProfile.load(path)
    assert again == hw
    assert again.has_cuda and not again.gpus[-1].usable_by_llamacpp


def test_documented_keys_present():
    d = hardware.detect().to_dict()
    for key in ("os", "arch", "cpu_cores", "ram_total_bytes", "ram_available_bytes", "gpus"):
        assert key in d


def test_doctor_json_is_accepted_as_hardware_file(tmp_path):
    from engines.cli import doctor_report
    path = tmp_path / "doctor.json"
    path.write_text(json.dumps(doctor_report(hardware.detect())))
    assert HardwareProfile.load(path).os == hardware.detect().os


@pytest.mark.parametrize("change,message", [
    ({"os": "beos"}, "os must be"),
    ({"arch": "sparc"}, "arch must be"),
    ({"gpus": [{"name": "x", "vendor": "matrox", "backend": "cuda", "memory_total_bytes": 1, "memory_free_bytes": 1}]},
     "vendor must be"),
])
def test_bad_profiles_are_refused_with_the_reason(change, message):
    d = dict(hardware.detect().to_dict(), **change)
    with pytest.raises(ValueError, match=message):
        HardwareProfile.from_dict(d)


def test_llamacpp_devices_become_gpus():
    """Real shape of xllamacpp.get_device_info() on a CUDA build (type is an enum there)."""
    devices = [
        {"name": "CUDA0", "description": "NVIDIA GeForce RTX 4090", "memory_free": 24000000000,
         "memory_total": 25757220864, "type": "GGML_BACKEND_DEVICE_TYPE_GPU", "device_id": "0000:01:00.0"},
        {"name": "CPU", "description": "AMD Ryzen 9", "memory_free": 1, "memory_total": 1,
         "type": "GGML_BACKEND_DEVICE_TYPE_CPU", "device_id": ""},
    ]
    gpus = hardware.gpus_from_devices(devices)
    assert len(gpus) == 1 and gpus[0].vendor == "nvidia" and gpus[0].backend == "cuda"
    assert gpus[0].llamacpp_device == "CUDA0"
    assert hardware._build_of(devices) == "cuda"


def test_nvml_gpu_unseen_by_a_cpu_build_is_kept_and_marked():
    nvml = [hardware.GPU("NVIDIA GeForce RTX 3060", "nvidia", "cuda", 12 << 30, 11 << 30)]
    merged = hardware.merge_gpus([], nvml)
    assert merged == nvml and not merged[0].usable_by_llamacpp
