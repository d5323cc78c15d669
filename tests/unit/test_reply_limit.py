"""Issue 14, point 7: Ember's own clients never ask for a reply without end.

llama.cpp reads ``max_tokens`` as a 32-bit number, -1 meaning "no limit": ``max_tokens: -1``
generated until the context ran out, and ``1e12`` wrapped round to a negative number. What the
engine receives is checked here at the wire: a recording fake upstream (httpx's MockTransport)
stands where the engine would be, for the streaming client, for ``ember chat`` (the real CLI, the
real plan of the starter, the engine replaced by that fake) and for the local API gateway (the
real Starlette app).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import pytest
from starlette.testclient import TestClient

from engines import cli
from engines.chat import reply_limit
from engines.chat.client import ChatStream, Delta, Finished
from engines.gateway.app import GatewayApp
from engines.gateway.config import GatewayConfig
from engines.gateway.routing import Target
from engines.running import launch

SSE = (b'data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
       b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
       b"data: [DONE]\n\n")


class Upstream:
    """A fake OpenAI-compatible engine that records the bodies it was sent."""

    def __init__(self):
        self.bodies: list[dict] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.bodies.append(json.loads(request.content))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=SSE)


class AsyncUpstream(Upstream):
    """The same, streaming to an async client (the gateway relays the bytes as they come)."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))

        async def chunks():
            yield SSE

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=chunks())


def test_the_client_clamps_to_the_context_and_refuses_a_limit_without_end():
    up = Upstream()
    client = httpx.Client(transport=httpx.MockTransport(up.handler))
    events = list(ChatStream("http://engine/v1", [{"role": "user", "content": "hi"}], client=client,
                             max_tokens=10 ** 12, context=2048))
    assert isinstance(events[0], Delta) and isinstance(events[-1], Finished)
    assert up.bodies[-1]["max_tokens"] == 2048 and events[-1].max_tokens == 2048
    list(ChatStream("http://engine/v1", [], client=client, max_tokens=10 ** 12))  # context unknown
    assert up.bodies[-1]["max_tokens"] == reply_limit.INT32_MAX  # never wraps round in a 32-bit engine
    for bad in (-1, 0, 2.5, "100", True):
        with pytest.raises(reply_limit.ReplyLimitError, match="max_tokens must be a whole number of tokens, 1 or more"):
            ChatStream("http://engine/v1", [], client=client, max_tokens=bad)
    assert len(up.bodies) == 2  # nothing was sent for the refused ones


def test_ember_chat_sends_at_most_the_context(fresh_home, monkeypatch, capsys):
    """`ember chat starter --max-tokens 1000000000000 hi`: the plan's context (n_ctx 2048, one slot) is what
    the engine is asked for. The engine is the recording fake, started by a patched launch.start."""
    up = Upstream()
    real_client = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda *a, **kw: real_client(transport=httpx.MockTransport(up.handler)))
    started = []

    def fake_start(plan, *a, **kw):
        started.append(plan)
        return SimpleNamespace(base_url="http://engine/v1", api_key="k", stop=lambda: None, model=plan.model.name,
                               pid=os.getpid(), log_size=lambda: 0, log_path="engine.log", running=True)

    monkeypatch.setattr(launch, "start", fake_start)
    code = cli.main(["chat", "starter", "--set", "n_ctx=2048", "--set", "n_parallel=1",
                     "--max-tokens", "1000000000000", "hi"])
    assert code == 0, capsys.readouterr().err
    assert len(started) == 1 and up.bodies[-1]["max_tokens"] == 2048


def test_ember_chat_refuses_a_negative_limit_before_starting_anything(fresh_home, monkeypatch, capsys):
    monkeypatch.setattr(launch, "start", lambda *a, **kw: pytest.fail("an engine was started"))
    with pytest.raises(SystemExit) as code:
        cli.main(["chat", "starter", "--max-tokens", "-1", "hi"])
    assert code.value.code == 2
    assert "argument --max-tokens: must be a number of tokens 1 or more, not -1" in capsys.readouterr().err


# -- the local API ----------------------------------------------------------------------------------

class StubManager:
    """What the gateway asks of the manager, for one running llama.cpp engine with n_ctx 4096 over 4 slots."""

    def __init__(self):
        plan = SimpleNamespace(engine="llamacpp", params={"n_ctx": 4096, "n_parallel": 4},
                               model=SimpleNamespace(context_length=32768, name="m"))
        self.run = SimpleNamespace(plan=plan, proc=SimpleNamespace(log_size=lambda: 0, log_path="x"))

    def get(self, name):
        return self.run if name == "m" else None

    @contextmanager
    def using(self, name):
        yield

    def running(self):
        return [self.run]

    def unloaded(self):
        return {}


class StubRouter:
    def __init__(self):
        self.manager = StubManager()
        self.targets: list[str] = []

    def choose(self, requested):
        return requested or "m"

    def target(self, name):
        self.targets.append(name)  # a start, for a model not running
        return Target(name, "http://engine/v1", "k", name, True)


@pytest.fixture
def gateway():
    up, router = AsyncUpstream(), StubRouter()
    app = GatewayApp(router, lambda: "secret", GatewayConfig(port=0))
    with TestClient(app.build(), base_url="http://127.0.0.1") as client:
        app.http = httpx.AsyncClient(transport=httpx.MockTransport(up.handler))
        yield client, up, router


def _ask(client, **body):
    return client.post("/v1/chat/completions", headers={"Authorization": "Bearer secret"},
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, **body})


@pytest.mark.parametrize("key,value", [("max_tokens", -1), ("max_tokens", 0), ("max_completion_tokens", -5),
                                       ("max_tokens", 1.5), ("max_tokens", "lots")])
def test_the_gateway_refuses_a_reply_limit_below_one_in_openai_shape(gateway, key, value):
    client, up, router = gateway
    r = _ask(client, **{key: value})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_max_tokens" and err["param"] == key and err["type"] == "invalid_request_error"
    assert err["message"] == f"{key} must be a whole number of tokens, 1 or more; got {value!r}."
    assert router.targets == [] and up.bodies == []  # no engine started, nothing sent


def test_the_gateway_clamps_a_reply_limit_beyond_the_context(gateway):
    client, up, router = gateway
    r = _ask(client, max_tokens=1e12)
    assert r.status_code == 200 and "Hi" in r.text
    assert up.bodies[-1]["max_tokens"] == 1024  # n_ctx 4096 over 4 slots: 1,024 tokens per request
    _ask(client, max_tokens=100)
    assert up.bodies[-1]["max_tokens"] == 100  # a sane limit passes as it is
