"""Issue 13: the local API gateway, for real: ``ember serve --port N`` as a child process, the real
openai SDK and httpx against it, the real starter started on demand (and the converted starter on
the real Transformers engine for unloading and eviction)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from engines import settings
from engines.gateway import keys
from engines.models import store

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ember_serve(*args: str, port: int | None = None):
    """``ember serve --port N [args]`` in the test's EMBER_HOME; yields (process, its JSON line)."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "engines.cli", "serve", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ))
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        pytest.fail(proc.stderr.read())
    try:
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def engines_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """The engine processes ``ember serve`` started (its children that are not finished)."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=False)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]


def running(info: dict) -> dict[str, bool]:
    rows = httpx.get(info["base_url"] + "/models", headers={"Authorization": f"Bearer {info['api_key']}"},
                     timeout=30).json()["data"]
    return {r["id"]: r["ember"]["running"] for r in rows if r["ember"]["where"] == "local"}


@pytest.fixture
def home(fresh_home):
    settings.update({"default_n_ctx": 512})  # small, so the over-long prompt below is quick to send
    return fresh_home


def test_the_openai_sdk_lists_loads_on_demand_and_streams(home):
    with ember_serve() as (proc, info):
        assert info["base_url"].startswith("http://127.0.0.1:") and info["api_key"] == keys.get()
        assert info["pid"] == proc.pid and "starter" in info["models"]
        assert engines_of(proc) == []  # nothing runs before a request asks for it
        client = openai.OpenAI(base_url=info["base_url"], api_key=info["api_key"], max_retries=0)
        assert "starter" in [m.id for m in client.models.list()]
        started = time.monotonic()
        first = client.completions.create(model="starter", prompt="The capital of France is", max_tokens=8)
        print(f"\nfirst answer with the load: {time.monotonic() - started:.1f} s")
        assert first.model == "starter" and first.choices[0].text
        assert len(engines_of(proc)) == 1 and running(info)["starter"]
        pieces = [c.choices[0].text for c in client.completions.create(
            model="starter", prompt="Once upon a time", max_tokens=24, stream=True) if c.choices]
        assert len(pieces) > 3 and "".join(pieces).strip()
        chat = client.chat.completions.create(model="starter", max_tokens=4,
                                              messages=[{"role": "user", "content": "Hello"}])
        assert chat.model == "starter" and chat.choices[0].message.content is not None
        assert len(engines_of(proc)) == 1  # the same engine answered every request


def test_errors_are_openai_shaped_and_say_what_to_do(home):
    with ember_serve() as (proc, info):
        client = openai.OpenAI(base_url=info["base_url"], api_key=info["api_key"], max_retries=0)
        with pytest.raises(openai.NotFoundError) as err:
            client.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2)
        body = err.value.body
        assert body["code"] == "model_not_found" and "starter" in body["served"] and "starter" in body["message"]
        with pytest.raises(openai.BadRequestError) as err:  # default_n_ctx 512: this does not fit
            client.completions.create(model="starter", prompt="Hello there. " * 400, max_tokens=4)
        body = err.value.body
        assert body["code"] == "context_exceeded" and err.value.status_code == 400
        fix = body["ember"]["fixes"][0]
        assert fix["changes"]["n_ctx"] > 512 and f"n_ctx={fix['changes']['n_ctx']}" in body["message"]
        assert body["ember"]["facts"]["n_prompt_tokens"] > 512
        for key in (None, "wrong"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.post(info["base_url"] + "/completions", json={"model": "starter", "prompt": "Hi"},
                           headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(info["base_url"] + "/models", timeout=30).status_code == 401
        nan = httpx.post(info["base_url"] + "/completions", content=b'{"model": "starter", "temperature": NaN}',
                         headers={"Authorization": f"Bearer {info['api_key']}"}, timeout=30)
        assert nan.status_code == 400 and nan.json()["error"]["code"] == "invalid_json" and "NaN" in nan.text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=info["base_url"], api_key="wrong", max_retries=0).models.list()


def test_browsers_and_rebinding_are_kept_out(home):
    with ember_serve() as (proc, info):
        url, key = info["base_url"], info["api_key"]
        preflight = httpx.options(url + "/chat/completions", timeout=30, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert "access-control-allow-origin" not in preflight.headers
        simple = httpx.get(url + "/models", headers={"Origin": "https://evil.example",
                                                     "Authorization": f"Bearer {key}"}, timeout=30)
        assert "access-control-allow-origin" not in simple.headers
        rebound = httpx.get(url + "/models", headers={"Host": "evil.example:80", "Authorization": f"Bearer {key}"},
                            timeout=30)
        assert rebound.status_code == 400
        assert httpx.get(url + "/models", headers={"Host": "localhost", "Authorization": f"Bearer {key}"},
                         timeout=30).status_code == 200
    settings.update({"gateway_origins": ["http://localhost:3000"]})  # the user lists one web app
    with ember_serve() as (proc, info):
        allowed = httpx.options(info["base_url"] + "/chat/completions", timeout=30, headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
        assert allowed.headers.get("access-control-allow-origin") == "http://localhost:3000"
        other = httpx.options(info["base_url"] + "/chat/completions", timeout=30, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers


def test_concurrent_requests_for_a_stopped_model_start_one_engine(home):
    with ember_serve() as (proc, info):
        results: list[str] = []

        def ask():
            r = httpx.post(info["base_url"] + "/completions", timeout=240,
                           headers={"Authorization": f"Bearer {info['api_key']}"},
                           json={"model": "starter", "prompt": "Hello", "max_tokens": 2})
            results.append(r.json()["model"] if r.status_code == 200 else r.text)

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == ["starter"] * 6
        assert len(engines_of(proc)) == 1
        logs = list((home / "logs" / "engines").glob("*starter*"))
        assert len(logs) == 1, logs  # one start, not six


def test_the_key_survives_a_restart_and_can_be_regenerated(home):
    with ember_serve() as (proc, info):
        first = info["api_key"]
    with ember_serve() as (proc, info):
        assert info["api_key"] == first
    mode = keys.path().stat().st_mode & 0o777
    assert mode == 0o600
    new = keys.regenerate()
    with ember_serve() as (proc, info):
        assert info["api_key"] == new != first
        r = httpx.get(info["base_url"] + "/models", headers={"Authorization": f"Bearer {first}"}, timeout=30)
        assert r.status_code == 401


def test_a_taken_port_is_said_with_the_fix(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "engines.cli", "serve", "--port", str(port)],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 1
    assert f"Port {port}" in out.stderr and "--port" in out.stderr and "Settings" in out.stderr


def test_kill_9_of_the_gateway_leaves_no_engine(home):
    with ember_serve() as (proc, info):
        httpx.post(info["base_url"] + "/completions", headers={"Authorization": f"Bearer {info['api_key']}"},
                   json={"model": "starter", "prompt": "Hi", "max_tokens": 2}, timeout=240).raise_for_status()
        engine = engines_of(proc)[0]
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and engine.is_running() and engine.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.05)
        assert not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE


@pytest.fixture
def two_models(home, starter_path):
    """The starter (llama.cpp) and the starter converted to safetensors (the Transformers engine)."""
    from tests.integration.test_engines_cpu import _fixture_module
    folder = _fixture_module().ensure(starter_path)
    store.add_local(folder, name="starter-hf")
    return "starter", "starter-hf"


def test_idle_models_unload_after_the_ttl_and_start_again(home):
    settings.update({"idle_unload_minutes": 0.05})  # 3 s
    with ember_serve() as (proc, info):
        h = {"Authorization": f"Bearer {info['api_key']}"}
        ask = {"model": "starter", "prompt": "Hi", "max_tokens": 2}
        httpx.post(info["base_url"] + "/completions", headers=h, json=ask, timeout=240).raise_for_status()
        assert running(info)["starter"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and running(info)["starter"]:
            time.sleep(0.5)
        assert not running(info)["starter"] and engines_of(proc) == []
        again = httpx.post(info["base_url"] + "/completions", headers=h, json=ask, timeout=240)
        assert again.status_code == 200 and running(info)["starter"]


def test_the_least_recently_used_model_makes_room(two_models):
    settings.update({"max_loaded_models": 1})
    with ember_serve() as (proc, info):
        h = {"Authorization": f"Bearer {info['api_key']}"}
        assert {"starter", "starter-hf"} <= set(running(info))
        for name in ("starter", "starter-hf", "starter"):
            r = httpx.post(info["base_url"] + "/completions", headers=h, timeout=300,
                           json={"model": name, "prompt": "Hello", "max_tokens": 2})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == name
            state = running(info)
            assert state[name] and sum(state.values()) == 1, state  # the other one was unloaded first
            assert len(engines_of(proc)) == 1


def test_messages_responses_and_embeddings_pass_through_with_the_engines_answer(home):
    with ember_serve() as (proc, info):
        h = {"Authorization": f"Bearer {info['api_key']}", "anthropic-version": "2023-06-01"}
        messages = httpx.post(info["base_url"] + "/messages", headers=h, timeout=240, json={
            "model": "starter", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
        assert messages.status_code == 200 and messages.json()["type"] == "message"
        assert messages.json()["model"] == "starter"
        responses = httpx.post(info["base_url"] + "/responses", headers=h, timeout=240,
                               json={"model": "starter", "input": "Hi", "max_output_tokens": 4})
        assert responses.status_code == 200 and responses.json()["object"] == "response"
        # the starter runs without embeddings: the engine's 501, said in Ember's terms
        embeddings = httpx.post(info["base_url"] + "/embeddings", headers=h, timeout=60,
                                json={"model": "starter", "input": "Hi"})
        err = embeddings.json()["error"]
        assert embeddings.status_code == 501 and "--set embedding=true" in err["message"]
        assert "--embeddings`" not in err["message"]  # llama-server's own flag, which Ember does not take


def test_serve_model_says_why_its_engine_died_and_the_next_request_starts_it_again(home):
    with ember_serve("starter", "--set", "n_ctx=1024") as (proc, info):
        assert info["model"] == "starter" and info["mode"] == "completion"
        engine = psutil.Process(info["pid"])
        h = {"Authorization": f"Bearer {info['api_key']}"}
        ask = {"prompt": "Hello", "max_tokens": 2}  # no model: a one-model server takes its own
        assert httpx.post(info["base_url"] + "/completions", headers=h, json=ask, timeout=120).status_code == 200
        engine.kill()
        again = httpx.post(info["base_url"] + "/completions", headers=h, json=ask, timeout=120)
        assert again.status_code == 200 and again.json()["model"] == "starter"
        assert [e.pid for e in engines_of(proc)] != [engine.pid] and len(engines_of(proc)) == 1
    err = proc.stderr.read()
    assert "The engine was killed" in err and "the next request starts it again" in err
