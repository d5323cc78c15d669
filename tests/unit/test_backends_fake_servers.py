"""vLLM and SGLang launched for real, against FAKE servers (this machine has no GPU).

A fake engine environment (tests/fixtures/fake_engines: ``vllm`` and ``sglang``
packages whose servers print real-shaped log lines) is reached through an
interpreter set for the engine, exactly as a user's separate vLLM environment
would be (setting ``engine_python.vllm``). This checks the interpreter probe,
the plan, the command the engine receives, readiness, the API key, chat, and a
start-up out-of-memory classified from the engine's own log.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import sys
from pathlib import Path

import psutil
import pytest

from engines.diagnosis.evidence import first_match
from engines.running import backends, engine_env
from engines.running import launch
from engines.running import supervisor
from engines.running.backends import availability
from engines.chat.client import ChatStream, Delta, EngineHTTPError, Finished
from engines.machine.hardware import GPU, HardwareProfile

FAKES = Path(__file__).resolve().parent.parent / "fixtures" / "fake_engines"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    engine_env.probe.cache_clear()
    yield tmp_path
    engine_env.probe.cache_clear()


def cuda_hw() -> HardwareProfile:
    gpu = GPU("NVIDIA GeForce RTX 4090", "nvidia", "cuda", 24 * 2**30, 23 * 2**30, "CUDA0")
    return HardwareProfile("linux", "x86_64", 16, 64 * 2**30, 60 * 2**30, [gpu], "AMD Ryzen", False, "cuda")


def fake_python(tmp_path: Path) -> str:
    """An 'interpreter' of a separate environment holding the fake engines."""
    script = tmp_path / "fake-env-python"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{FAKES}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def model_folder(tmp_path: Path, mode: str = "ok", delay: float = 0.3) -> Path:
    folder = tmp_path / f"qwen-{mode}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "hidden_size": 896, "max_position_embeddings": 32768}))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    (folder / "ember_fake.json").write_text(json.dumps({"mode": mode, "delay": delay}))
    return folder


def test_interpreter_setting_is_probed_for_the_engine(home):
    if importlib.util.find_spec("vllm") is None:
        assert not availability("vllm").installed  # not in Ember's own environment
    python = fake_python(home)
    engine_env.set_python("vllm", python)
    a = availability("vllm")
    assert (a.installed, a.version, a.interpreter) == (True, "0.0.0+fake", python)
    engine_env.set_python("sglang", str(home / "no-such-python"))
    a = availability("sglang")
    assert not a.installed and "does not exist" in a.problem
    assert a.install_command.startswith("pip install 'sglang[all]'")


def test_doctor_shows_each_engines_interpreter(home):
    from engines import cli
    from engines.machine import hardware
    python = fake_python(home)
    engine_env.set_python("vllm", python)
    report = cli.doctor_report(hardware.HardwareProfile.from_dict(cuda_hw().to_dict()))
    assert report["engines"]["vllm"]["interpreter"] == python
    assert report["engines"]["vllm"]["version"] == "0.0.0+fake"
    assert report["engines"]["sglang"]["install_command"]  # not installed: how to install is shown


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_fake_server_ready_then_chat_with_key(home, engine):
    engine_env.set_python(engine, fake_python(home))
    plan = launch.plan(str(model_folder(home)), cuda_hw(), engine, ["tensor_parallel_size=1"] if engine == "vllm"
                       else ["tp_size=1"])
    assert plan.engine == engine
    proc = launch.start(plan, timeout=30)
    try:
        log_text = "\n".join(proc.log_lines())
        argv = json.loads(re.search(r"FAKE \w+ argv: (.*)", log_text).group(1))
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert argv[argv.index("--max-model-len" if engine == "vllm" else "--context-length") + 1] == "4096"
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) >= 2 and not [p.cmdline() for p in tree if proc.api_key in " ".join(p.cmdline())]  # ps
        stream = ChatStream(proc.base_url, [{"role": "user", "content": "hi"}], proc.api_key)
        events = list(stream)
        assert "".join(e.text for e in events if isinstance(e, Delta)) == f"Hello from a fake {engine}"
        assert isinstance(events[-1], Finished) and events[-1].finish_reason == "stop"
        with pytest.raises(EngineHTTPError) as err:
            list(ChatStream(proc.base_url, [{"role": "user", "content": "hi"}], "wrong-key"))
        assert err.value.status == 401
    finally:
        assert proc.stop() == supervisor.Stop.OK


@pytest.mark.parametrize("engine,mode,cause", [("vllm", "kv", "max_model_len"), ("vllm", "oom", None),
                                               ("sglang", "oom", "kv_cache")])
def test_startup_oom_is_a_failed_start_classified_from_the_log(home, engine, mode, cause):
    engine_env.set_python(engine, fake_python(home))
    plan = launch.plan(str(model_folder(home, mode)), cuda_hw(), engine)
    with pytest.raises(supervisor.EngineStartError) as err:
        launch.start(plan, timeout=30)
    exc = err.value
    assert not exc.timed_out and exc.status.code == 1
    chosen = backends.get(engine)
    m = first_match(chosen.log_patterns, exc.log_tail)
    kind, facts = m.kind, m.facts
    assert kind == "oom_load" and facts.get("memory") == "gpu"
    assert facts.get("cause") == cause
    fixes = chosen.fixes_for(kind, facts, plan)
    assert fixes, "an out-of-memory start must come with a fix"
    changed = plan.with_changes(fixes[0].changes)  # the one-click fix re-plans cleanly
    for key, value in fixes[0].changes.items():
        assert changed.params[key] == value
    from engines.diagnosis import diagnose
    d = diagnose.diagnose_exception(exc, plan=plan)
    assert d is not None and d.kind in ("oom_load", "kv_cache_full")


def test_a_server_that_never_answers_times_out_and_is_stopped(home):
    engine_env.set_python("vllm", fake_python(home))
    plan = launch.plan(str(model_folder(home, "hang")), cuda_hw(), "vllm")
    with pytest.raises(supervisor.EngineStartError) as err:
        launch.start(plan, timeout=2)
    assert err.value.timed_out
    assert "Initializing a V1 LLM engine" in "\n".join(err.value.log_tail)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_engine_server_dies_with_a_killed_worker(home):
    """SIGKILL of the worker cannot be forwarded; the engine's own parent-death signal ends it."""
    import signal
    import time

    import psutil
    engine_env.set_python("vllm", fake_python(home))
    proc = launch.start(launch.plan(str(model_folder(home)), cuda_hw(), "vllm"), timeout=30)
    server = psutil.Process(proc.pid).children()[0]
    assert "vllm.entrypoints.openai.api_server" in " ".join(server.cmdline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.proc.wait()
    deadline = time.monotonic() + 5
    while server.is_running() and server.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE


def test_vllm_engine_arguments_are_read_from_the_installed_vllm(home):
    """Beyond the documented table, every EngineArgs field of the user's vLLM is a valid key."""
    from engines.running.backends import vllm as vllm_module
    vllm = backends.get("vllm")
    if importlib.util.find_spec("vllm") is None:
        assert "block_size" not in vllm.schema()  # no vLLM here: the documented table only
    engine_env.set_python("vllm", fake_python(home))
    vllm_module.introspect.cache_clear()
    schema = vllm.schema()
    assert schema["block_size"].type == "int" and schema["cpu_offload_gb"].type == "float"
    assert schema["enable_chunked_prefill"].type == "bool"
    assert "model" not in schema  # Ember's own
    assert schema["gpu_memory_utilization"].default == 0.9  # the documented entry wins
    values = vllm.validate(["block_size=32", "enable_chunked_prefill=true", "tokenizer_mode=slow"])
    spec = launch.store.spec_from_folder(model_folder(home))
    program = vllm.command(spec, values, "127.0.0.1", 8000, "k").argv
    assert program[program.index("--block-size") + 1] == "32"
    assert "--enable-chunked-prefill" in program
    off = vllm.command(spec, vllm.validate(["enable_chunked_prefill=false"]), "127.0.0.1", 8000, "k").argv
    assert "--no-enable-chunked-prefill" in off
    assert program[program.index("--tokenizer-mode") + 1] == "slow"
    cached = list((home / "home").rglob("vllm-engine-args-*.json"))
    assert len(cached) == 1  # the next Ember start does not import vLLM again
    vllm_module.introspect.cache_clear()
    cached[0].write_text(json.dumps([["only_from_cache", "int", 7]]))
    assert "only_from_cache" in vllm.schema()


def test_transformers_in_another_interpreter_finds_embers_server(home):
    """A separate transformers environment runs engines.running.hf_server from Ember's folder."""
    transformers = backends.get("transformers")
    engine_env.set_python("transformers", fake_python(home))
    spec = launch.store.spec_from_folder(model_folder(home))
    cmd = transformers.command(spec, {}, "127.0.0.1", 8000, "k")
    assert cmd.env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(launch.__file__).resolve().parents[2])
    assert fake_python(home) in cmd.argv


def test_every_fix_the_diagnosis_offers_for_vllm_relaunches(home):
    from engines.diagnosis import diagnose
    engine_env.set_python("vllm", fake_python(home))
    plan = launch.plan(str(model_folder(home, "kv")), cuda_hw(), "vllm")
    with pytest.raises(supervisor.EngineStartError) as err:
        launch.start(plan, timeout=30)
    d = diagnose.diagnose_exception(err.value, plan=plan)
    assert d.kind == "oom_load"
    assert d.fixes[0].changes == {"max_model_len": 1280}  # vLLM's own estimate (4096 // 3), rounded down
    for f in d.fixes:
        if f.changes:
            plan.with_changes(f.changes)  # raises ParamError for a key vLLM does not have


def test_cli_sets_an_engines_python(home):
    import subprocess
    env = dict(os.environ, EMBER_HOME=str(home / "home"))

    def ember(*args):
        return subprocess.run([sys.executable, "-m", "engines.cli", *args], capture_output=True, text=True, env=env,
                              timeout=60)

    out = ember("engine-python", "vllm", str(home / "missing-python"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = ember("engine-python", "vllm", fake_python(home))
    assert out.returncode == 0 and "vLLM 0.0.0+fake found" in out.stdout
    doctor = json.loads(ember("doctor", "--json").stdout)
    assert doctor["engines"]["vllm"]["interpreter"] == fake_python(home)
    out = ember("engine-python", "vllm", "--reset")
    assert "Ember's own" in out.stdout and "pip install vllm" in out.stdout


def test_a_frozen_ember_needs_an_environment_for_python_engines(home, monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    a = availability("transformers")
    assert not a.installed and "ember engine-python" in a.problem
    assert availability("llamacpp").installed  # runs inside Ember's own worker


def test_sglang_server_arguments_are_read_from_the_installed_sglang(home):
    sglang = backends.get("sglang")
    if importlib.util.find_spec("sglang") is None:
        assert "schedule_policy" not in sglang.schema()
    engine_env.set_python("sglang", fake_python(home))
    schema = sglang.schema()
    assert schema["cuda_graph_max_bs"].type == "int" and schema["enable_torch_compile"].type == "bool"
    assert "model_path" not in schema
    values = sglang.validate(["schedule_policy=lpm", "enable_torch_compile=true", "cuda_graph_max_bs=8"])
    spec = launch.store.spec_from_folder(model_folder(home))
    argv = sglang.command(spec, values, "127.0.0.1", 8000, "k").argv
    assert argv[argv.index("--schedule-policy") + 1] == "lpm" and "--enable-torch-compile" in argv
    assert argv[argv.index("--cuda-graph-max-bs") + 1] == "8"


def test_transformers_in_an_environment_without_the_http_stack_is_diagnosed(home):
    """Ember's server for transformers runs on starlette and uvicorn: an environment without them gets a
    diagnosis naming the module and that environment's install command, not a traceback."""
    stub = home / "no-starlette" / "starlette"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'starlette'\", name='starlette')\n")
    python = home / "env-python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{stub.parent}${{PYTHONPATH:+:$PYTHONPATH}}" '
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    engine_env.set_python("transformers", str(python))
    plan = launch.plan(str(model_folder(home)), cuda_hw(), "transformers")
    with pytest.raises(supervisor.EngineStartError) as err:
        launch.start(plan, timeout=60)
    from engines.diagnosis import diagnose
    d = diagnose.diagnose_exception(err.value, plan=plan)
    assert d.kind == "engine_missing" and d.facts["module"] == "starlette"
    assert d.title == "The Transformers engine's Python lacks starlette"
    assert "Traceback" not in "\n".join(d.log_tail)
    assert d.primary_fix.action == "install" and d.primary_fix.note == (
        f"{python} -m pip install torch 'transformers>=4.50' safetensors accelerate 'starlette>=0.40' 'uvicorn>=0.30'")


def test_a_separate_transformers_environment_is_asked_for_the_whole_extra():
    """What Ember tells a separate environment to install is pyproject's transformers extra, the server's stack
    included, and the interpreter probe asks for the same modules."""
    import tomllib
    from engines.running.backends import installed
    extra = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    wanted = extra["project"]["optional-dependencies"]["transformers"]
    named = [re.split(r"[<>=!; ]", p.strip("'"))[0] for p in installed.SEPARATE_ENVIRONMENT["transformers"].split()]
    assert named == [re.split(r"[<>=!; ]", p)[0] for p in wanted]
    assert {"starlette", "uvicorn"} <= set(engine_env.PACKAGES["transformers"][1])
