"""The HTTP side of the transformers engine's server (engines.running.hf_server), on a real socket.

The model is replaced by a scripted engine (prompt length, text pieces, usage),
so the routes, the API key, SSE streaming and the OpenAI error shapes are
checked without torch; test_engines_cpu runs the whole server with a real model.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from engines.running import hf_server

KEY = "sk-test"
ROOT = Path(__file__).resolve().parents[2]


class _Ids:
    def __init__(self, n: int):
        self.shape = (1, n)


class ScriptedEngine:
    """Stands in for hf_server.Engine: a fixed prompt length and a fixed answer."""

    model_id, max_model_len = "tiny", 64

    def __init__(self, prompt_tokens: int = 5, pieces=("Hel", "lo")):
        self.prompt_tokens, self.pieces = prompt_tokens, pieces

    def prompt_ids(self, messages):
        return _Ids(self.prompt_tokens)

    def text_ids(self, prompt):
        return _Ids(self.prompt_tokens)

    def generate(self, body, ids, cancel, out):
        for p in self.pieces:
            out.put(p)
        n = len(self.pieces)
        out.put(("done", {"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                          "total_tokens": self.prompt_tokens + n}, "stop"))


@pytest.fixture
def serve():
    """Start the app on a free loopback port, as main does (Uvicorn on a socket bound beforehand)."""
    running = []

    def start(engine=None, key=KEY):
        sock = hf_server.listen("127.0.0.1", 0)
        config = uvicorn.Config(hf_server.make_app(engine or ScriptedEngine(), key), log_config=None,
                                log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        running.append((server, thread))
        return sock.getsockname()[1]

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(10)


def _request(port, method, path, body=None, key=KEY):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    try:
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_health_is_open_and_models_need_the_key(serve):
    port = serve()
    assert _request(port, "GET", "/health", key=None) == (200, '{"status": "ok"}')
    status, text = _request(port, "GET", "/v1/models", key="wrong")
    assert status == 401 and json.loads(text)["error"]["type"] == "authentication_error"
    status, text = _request(port, "GET", "/v1/models")
    assert status == 200 and json.loads(text)["data"][0] == {"id": "tiny", "object": "model", "owned_by": "ember",
                                                             "max_model_len": 64}
    assert _request(port, "GET", "/nowhere")[0] == 404


def test_a_whole_answer(serve):
    status, text = _request(serve(), "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    answer = json.loads(text)
    assert status == 200 and answer["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["usage"]["total_tokens"] == 7


def test_a_streamed_answer_with_usage(serve):
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": True}}
    status, text = _request(serve(), "POST", "/v1/chat/completions", body)
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_a_prompt_longer_than_the_context_is_refused_as_llama_cpp_does(serve):
    port = serve(ScriptedEngine(prompt_tokens=64))
    status, text = _request(port, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
    err = json.loads(text)["error"]
    assert status == 400 and err["type"] == "exceed_context_size_error"
    assert err["n_prompt_tokens"] == 64 and err["n_ctx"] == 64


def test_a_request_without_messages_is_a_bad_request(serve):
    status, text = _request(serve(), "POST", "/v1/chat/completions", {"messages": []})
    assert status == 400 and json.loads(text)["error"]["type"] == "invalid_request_error"


def test_a_text_completion_whole_and_streamed(serve):
    """Completion mode (a model without a chat template): /v1/completions, OpenAI's text_completion shape."""
    port = serve()
    status, text = _request(port, "POST", "/v1/completions", {"prompt": "The capital of France is"})
    answer = json.loads(text)
    assert status == 200 and answer["object"] == "text_completion" and answer["model"] == "tiny"
    assert answer["choices"][0]["text"] == "Hello" and answer["choices"][0]["finish_reason"] == "stop"
    body = {"prompt": "The capital of France is", "stream": True, "stream_options": {"include_usage": True}}
    status, text = _request(port, "POST", "/v1/completions", body)
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert status == 200 and events[-1] == "[DONE]"
    assert {c["object"] for c in chunks} == {"text_completion"} and {c["model"] for c in chunks} == {"tiny"}
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "Hello"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_a_completion_without_a_prompt_is_a_bad_request(serve):
    status, text = _request(serve(), "POST", "/v1/completions", {"prompt": ""})
    assert status == 400 and json.loads(text)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/completions", {"prompt": "hi"}),
])
def test_the_served_name_is_the_only_model(serve, path, body):
    """The id `ember serve` prints is the one the server answers to; another name is refused, listing it."""
    port = serve()
    status, text = _request(port, "POST", path, dict(body, model="tiny"))
    assert status == 200 and json.loads(text)["model"] == "tiny"
    status, text = _request(port, "POST", path, dict(body, model="gpt-4o"))
    err = json.loads(text)["error"]
    assert status == 404 and err["type"] == "model_not_found" and err["served_models"] == ["tiny"]
    assert "'gpt-4o' is not served here; this server serves 'tiny'" in err["message"]


def test_the_key_is_checked_on_every_route_but_health(serve):
    port = serve()
    for path in ("/v1/models", "/models"):
        assert _request(port, "GET", path, key=None)[0] == 401
    status, text = _request(port, "POST", "/v1/completions", {"prompt": "hi"}, key="sk-tes")
    assert status == 401 and json.loads(text)["error"] == {"message": "Invalid API key",
                                                           "type": "authentication_error", "code": 401}
    assert _request(serve(key=None), "GET", "/v1/models", key=None)[0] == 200  # started without a key: open


@pytest.mark.parametrize("method,path", [("GET", "/nowhere"), ("POST", "/nowhere"), ("GET", "/v1/chat/completions"),
                                         ("POST", "/health")])
def test_no_route_is_a_json_404(serve, method, path):
    status, text = _request(serve(), method, path, {} if method == "POST" else None)
    assert status == 404 and json.loads(text)["error"] == {"message": f"no route {path}", "type": "not_found_error",
                                                           "code": 404}


def test_a_body_that_is_not_json_is_a_bad_request(serve):
    conn = http.client.HTTPConnection("127.0.0.1", serve(), timeout=10)
    conn.request("POST", "/v1/chat/completions", "{not json", {"Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    err = json.loads(resp.read())["error"]
    assert resp.status == 400 and err["type"] == "invalid_request_error" and err["message"].startswith("bad request:")


class EndlessEngine(ScriptedEngine):
    """Writes a piece every 10 ms until it is told to stop (or 10 s pass); says when it stopped."""

    def __init__(self):
        super().__init__()
        self.started, self.stopped = threading.Event(), threading.Event()

    def generate(self, body, ids, cancel, out):
        self.started.set()
        deadline = time.monotonic() + 10
        while not cancel.is_set() and time.monotonic() < deadline:
            out.put("x")
            time.sleep(0.01)
        if cancel.is_set():
            self.stopped.set()
        out.put(("done", {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}, "length"))


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_stops_its_generation(serve, stream):
    engine = EndlessEngine()
    port = serve(engine)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        assert engine.started.wait(5)
        if stream:
            assert b"text/event-stream" in sock.recv(4096)
    assert engine.stopped.wait(5), "the generation went on after its client left"


class FailingEngine(ScriptedEngine):
    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def generate(self, body, ids, cancel, out):
        if self.how == "raises":  # before the generation starts (a bad value in the request)
            raise ValueError("max_tokens must be a number")
        out.put("Hel")
        out.put(("error", RuntimeError("CUDA error: an illegal memory access was encountered")))


def test_a_failed_generation_is_an_error_answer_not_silence(serve):
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    status, text = _request(serve(FailingEngine("raises")), "POST", "/v1/chat/completions", chat)
    assert status == 500 and json.loads(text)["error"] == {"message": "ValueError: max_tokens must be a number",
                                                           "type": "server_error", "code": 500}
    status, text = _request(serve(FailingEngine("breaks")), "POST", "/v1/chat/completions", dict(chat, stream=True))
    last = json.loads([line for line in text.splitlines() if line.startswith("data: ")][-1][len("data: "):])
    assert status == 200 and last["error"]["message"] == ("RuntimeError: CUDA error: an illegal memory access "
                                                          "was encountered")


def test_the_port_opens_only_once_the_model_is_loaded(monkeypatch, capfd, caplog):
    """main: load, then listen; /health answers at once; one log line per request; the key leaves the env."""
    caplog.set_level(logging.INFO)
    loaded, servers = threading.Event(), []

    class SlowEngine(ScriptedEngine):
        def __init__(self, args):
            super().__init__()
            loaded.wait(10)

    class Server(uvicorn.Server):
        def __init__(self, config):
            super().__init__(config)
            servers.append(self)

    monkeypatch.setattr(hf_server, "Engine", SlowEngine)
    monkeypatch.setattr(hf_server.uvicorn, "Server", Server)
    monkeypatch.setenv("EMBER_API_KEY", KEY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    thread = threading.Thread(target=hf_server.main, args=(["--model", "/m/tiny", "--port", str(port)],), daemon=True)
    thread.start()
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    loaded.set()
    deadline = time.monotonic() + 10
    while not (servers and servers[0].started) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert _request(port, "GET", "/health", key=None)[0] == 200
        assert _request(port, "GET", "/v1/models")[0] == 200 and "EMBER_API_KEY" not in os.environ
    finally:
        servers[0].should_exit = True
        thread.join(10)
    assert f"ember-hf: ready on http://127.0.0.1:{port}" in capfd.readouterr().err
    assert any('"GET /health HTTP/1.1" 200' in r.getMessage() for r in caplog.records if r.name == "uvicorn.access")


def test_an_interpreter_without_starlette_or_uvicorn_is_told_what_to_install():
    """The engine's own Python may lack the HTTP stack: one line that says so and how to fix it, no traceback."""
    code = ("import sys; sys.modules['uvicorn'] = None\n"
            "from engines.running import hf_server\n"
            "sys.exit(hf_server.main(['--model', '/m/tiny', '--port', '1']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("ember-hf: No module named 'uvicorn': Ember's Transformers server needs starlette "
                                 f"and uvicorn in this Python ({sys.executable}); install them with: "
                                 f"{sys.executable} -m pip install 'starlette>=0.40' 'uvicorn>=0.30'")


def test_answers_are_not_held_back_by_nagle(serve):
    """Headers and body leave at once: ten answers on one connection take milliseconds, not 10 x 40 ms of
    delayed ACKs (as http.server's did, and as a listening socket that does not name TCP would)."""
    conn = http.client.HTTPConnection("127.0.0.1", serve(), timeout=10)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.monotonic()
    for _ in range(10):
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b'{"status": "ok"}'
    assert time.monotonic() - started < 0.3
    conn.close()
