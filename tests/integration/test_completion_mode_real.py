"""The starter in completion mode on the real llama.cpp engine: no template tokens, and the reply ends.

The starter is a base model (no chat template). Through ``/v1/completions``
with the prompt :mod:`engines.chat.completion_mode` builds, greedy decoding
loops on "It is the capital of the country of France. It is the largest city
in France." (tests/fixtures/replies); :class:`ReplyWatch` must stop it well
before the limit and name the reason.
"""
from __future__ import annotations

import json

import httpx

from engines.chat import completion_mode as cm
from engines.chat.client import Delta, Finished, Usage
from engines.chat.guard import ReplyWatch
from engines.chat.stop_reason import StopReason

LIMIT = 200


def _stream(engine, body: dict):
    """The completion's text pieces, then ("finish", reason, usage); stops when the caller closes it."""
    with httpx.stream("POST", engine.base_url + cm.COMPLETION_PATH, json=body, timeout=300,
                      headers={"Authorization": f"Bearer {engine.api_key}"}) as resp:
        assert resp.status_code == 200, resp.read()
        reason, usage = None, {}
        for line in resp.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            event = json.loads(line[5:])
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    yield choice["text"]
                reason = choice.get("finish_reason") or reason
        yield ("finish", reason, usage)


def test_the_starter_continues_text_and_its_loop_is_stopped(starter_engine, starter_spec):
    assert cm.mode_of(starter_spec).mode is cm.Mode.COMPLETION
    body = cm.completion_request([{"role": "user", "content": "The capital of France is "}]).body(
        max_tokens=LIMIT, temperature=0)
    watch, pieces, ended = ReplyWatch(), 0, None
    stream = _stream(starter_engine, body)
    for item in stream:
        if isinstance(item, tuple):
            ended = Finished(item[1], Usage(item[2].get("prompt_tokens"), item[2].get("completion_tokens")),
                             max_tokens=LIMIT)
            break
        pieces += 1
        watch.feed(Delta(item))
        if watch.repeating:
            stream.close()  # what ChatStream.cancel() does for the chat window
            ended = Finished("cancelled", Usage(), max_tokens=LIMIT, cancelled=True)
            break
    watch.flush()
    reason = watch.reason(ended)
    assert reason is StopReason.REPEATING, (reason, watch.text)
    assert pieces < LIMIT * 0.6  # stopped by the guard, long before the limit
    assert watch.text.strip() and "<|" not in watch.text and "<start_of_turn>" not in watch.text
    assert reason.sentence() == "Stopped: the model was repeating itself"
