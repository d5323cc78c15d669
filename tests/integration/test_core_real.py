"""The core end to end with real processes and the real starter model."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from engines.chat import client
from engines.running import launch
from engines.models import store
from engines.running import supervisor

from ..conftest import ember_cmd

pytestmark = pytest.mark.slow


def run(*args, timeout=120, env=None):
    return subprocess.run(ember_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or os.environ.copy())


# -- the starter model -----------------------------------------------------------------

def test_starter_assembles_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_HOME", str(tmp_path))
    target = store.starter_path()
    # an interrupted earlier assembly left a partial file and a half-written target without a stamp
    target.parent.mkdir(parents=True)
    (target.parent / (target.name + ".partial")).write_bytes(b"GGUF" + b"\0" * 1000)
    target.write_bytes(b"GGUF" + b"\0" * 1000)
    path = store.ensure_starter()
    assert path == target and path.stat().st_size == 253113024
    assert not (target.parent / (target.name + ".partial")).exists()
    mtime = path.stat().st_mtime_ns
    t0 = time.monotonic()
    store.ensure_starter()
    assert path.stat().st_mtime_ns == mtime  # assembling twice does nothing
    assert time.monotonic() - t0 < 0.5
    assert store.resolve_local("starter").block_count == 18


def test_killed_assembly_never_leaves_a_usable_looking_file(tmp_path):
    env = dict(os.environ, EMBER_HOME=str(tmp_path))
    code = "from engines.models import store; store.ensure_starter()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    partial = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = list(tmp_path.rglob("*.partial"))
        if found and found[0].stat().st_size > 10_000_000:
            partial = found[0]
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert partial is not None, "assembly finished before it could be interrupted"
    target = partial.with_name(partial.name.removesuffix(".partial"))
    assert not target.exists()
    env_ok = subprocess.run([sys.executable, "-c", "from engines.models import store; print(store.ensure_starter())"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert env_ok.returncode == 0 and target.stat().st_size == 253113024


# -- CLI ------------------------------------------------------------------------------

def test_chat_answers():
    r = run("chat", "starter", "--max-tokens", "16", "The capital of France is")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 0


def test_chat_with_a_bad_parameter_fails_clearly():
    r = run("chat", "starter", "--set", "sampling.top_kk=3", "hi")
    assert r.returncode != 0
    assert "sampling.top_kk" in r.stderr and "sampling.top_k" in r.stderr


def test_doctor_json_and_models_json(tmp_path):
    r = run("doctor", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["hardware"]["cpu_cores"] >= 1 and report["engines"]["llamacpp"]["installed"]
    rows = json.loads(run("models", "--json").stdout)
    starter = next(m for m in rows if m["name"] == "starter")
    assert starter["engine"] == "llamacpp" and starter["fit"] == "cpu"
    # the same model judged on another machine's profile
    other = dict(report["hardware"], gpus=[{"name": "NVIDIA GeForce RTX 4090", "vendor": "nvidia", "backend": "cuda",
                                           "memory_total_bytes": 25757220864, "memory_free_bytes": 24000000000,
                                           "llamacpp_device": "CUDA0"}])
    (tmp_path / "hw.json").write_text(json.dumps(other))
    rows = json.loads(run("models", "--json", "--hardware", str(tmp_path / "hw.json")).stdout)
    starter = next(m for m in rows if m["name"] == "starter")
    assert starter["fit"] == "gpu" and starter["gpu_layers"] == starter["total_layers"] == 19


@pytest.fixture
def served():
    proc = subprocess.Popen(ember_cmd("serve", "starter", "--set", "n_ctx=2048"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    info = json.loads(line)
    yield proc, info
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_serve_checks_the_api_key(served):
    proc, info = served
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    url = info["base_url"] + "/chat/completions"
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    ok = httpx.post(url, json=body, headers={"Authorization": f"Bearer {info['api_key']}"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None
    assert info["base_url"].startswith("http://127.0.0.1:")
    assert psutil.Process(info["pid"]).ppid() == proc.pid


def test_serve_prints_the_id_the_server_answers_with(served, starter_path):
    """llama.cpp's model_alias: /v1/models and every answer say "starter", never the file's path."""
    proc, info = served
    headers = {"Authorization": f"Bearer {info['api_key']}"}
    assert info["model"] == "starter" and info["mode"] == "completion"
    models = httpx.get(info["base_url"] + "/models", headers=headers, timeout=30)
    assert [m["id"] for m in models.json()["data"]] == ["starter"]
    assert str(starter_path) not in models.text and os.path.expanduser("~") not in models.text
    for path, body in (("/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
                       ("/completions", {"prompt": "Hi"})):
        answer = httpx.post(info["base_url"] + path, json=dict(body, max_tokens=2), headers=headers, timeout=60)
        assert answer.json()["model"] == "starter"
        # llama.cpp itself would answer any name; Ember's gateway in front refuses it, listing the served one
        other = httpx.post(info["base_url"] + path, json=dict(body, max_tokens=2, model="gpt-4o"), headers=headers,
                           timeout=60)
        assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
        assert other.json()["error"]["served"] == ["starter"] and "starter" in other.json()["error"]["message"]


def test_serve_stops_its_engine_on_sigterm(served):
    proc, info = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE


def test_kill_9_of_ember_leaves_no_engine(served):
    proc, info = served
    engine = psutil.Process(info["pid"])
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and engine.is_running() and engine.status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)
    assert not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE


# -- supervisor + client ---------------------------------------------------------------

def test_streaming_yields_deltas_then_finish(starter_engine):
    stream = client.ChatStream(starter_engine.base_url, [{"role": "user", "content": "Count: one, two,"}],
                               starter_engine.api_key, max_tokens=24)
    events = list(stream)
    deltas = [e for e in events if isinstance(e, client.Delta)]
    fin = events[-1]
    assert len(deltas) > 3 and isinstance(fin, client.Finished)
    assert fin.usage.completion_tokens == 24 and fin.finish_reason == "length"
    assert fin.tokens_per_second and fin.tokens_per_second > 1


def test_cancel_mid_stream(starter_engine):
    stream = client.ChatStream(starter_engine.base_url, [{"role": "user", "content": "Tell a long story."}],
                               starter_engine.api_key, max_tokens=2000)
    got = 0
    for ev in stream:
        if isinstance(ev, client.Delta):
            got += 1
            if got == 5:
                stream.cancel()
        else:
            assert ev.cancelled and ev.finish_reason == "cancelled"
    assert got < 50
    # the engine is still fine afterwards
    assert httpx.get(starter_engine.root_url + "/health", timeout=5).status_code == 200


def test_request_in_flight_when_the_engine_dies_ends_with_an_error_not_a_hang():
    proc = launch.start(launch.plan("starter", overrides={"n_ctx": 2048}))
    stream = client.ChatStream(proc.base_url, [{"role": "user", "content": "Write a long essay."}], proc.api_key,
                               max_tokens=3000)
    outcome = {}

    def consume():
        try:
            for _ in stream:
                pass
            outcome["result"] = "finished"
        except client.StreamBroken as exc:
            outcome["result"] = exc
    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.8)
    killed_at = time.monotonic()
    proc.kill()
    t.join(10)
    assert not t.is_alive(), "the client hung after the engine died"
    assert time.monotonic() - killed_at < 5
    assert isinstance(outcome["result"], client.StreamBroken)
    assert proc.exit_status().signal == signal.SIGKILL
    assert "SIGKILL" in proc.exit_status().sentence


def test_start_failure_carries_the_log(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\0" * 100)
    spec = store.ModelSpec("bad", "gguf", "Q4_K_M", path=str(bad), block_count=1, context_length=2048)
    p = launch.plan(spec, overrides={"n_ctx": 512})
    with pytest.raises(supervisor.EngineStartError) as err:
        launch.start(p, timeout=30)
    e = err.value
    assert e.status is not None and e.status.code != 0
    assert e.log_path.exists() and any("gguf" in line.lower() for line in e.log_tail)


def test_what_loaded_is_read_back_from_the_engine(starter_engine):
    loaded = starter_engine.meta["loaded"]
    assert loaded.n_ctx == 2048 and loaded.n_slots == 1 and loaded.n_ctx_slot == 2048
    assert loaded.kv_cache_mib > 0 and sum(loaded.model_buffers_mib.values()) > 200
    assert "all layers on CPU" in loaded.summary()
