"""The HTTP side of the transformers engine's server (engines.running.hf_server), on a real socket.

The model is replaced by a scripted engine (prompt length, text pieces, usage),
so the routes, the API key, SSE streaming and the OpenAI error shapes are
checked without torch; test_engines_cpu runs the whole server with a real model.
"""
from __future__ import annotations

import http.client
import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from engines.running import hf_server

KEY = "sk-test"


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
    servers = []

    def start(engine=None):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), hf_server.make_handler(engine or ScriptedEngine(), KEY))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


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
