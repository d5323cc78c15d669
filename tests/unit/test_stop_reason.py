"""Every way a reply ends has one reason and one sentence for the status line."""
from __future__ import annotations

import pytest

from engines.chat.client import EngineHTTPError, Finished, StreamBroken, Usage
from engines.chat.stop_reason import SENTENCES, StopReason, from_error, from_finished


@pytest.mark.parametrize("finished,repeating,reason", [
    (Finished("stop", Usage(12, 40), max_tokens=512), False, StopReason.FINISHED),
    (Finished(None, Usage(), max_tokens=512), False, StopReason.FINISHED),  # an engine that never says why
    (Finished("length", Usage(12, 512), max_tokens=512), False, StopReason.REPLY_LIMIT),
    (Finished("length", Usage(12, 470), max_tokens=512), False, StopReason.REPLY_LIMIT),  # counted differently
    (Finished("length", Usage(None, None), max_tokens=512), False, StopReason.REPLY_LIMIT),
    (Finished("length", Usage(1800, 248), max_tokens=1024), False, StopReason.CONTEXT_FULL),
    (Finished("length", Usage(100, 28), max_tokens=None), False, StopReason.CONTEXT_FULL),
    (Finished("cancelled", Usage(), max_tokens=512, cancelled=True), False, StopReason.STOPPED_BY_YOU),
    (Finished("cancelled", Usage(), max_tokens=512, cancelled=True), True, StopReason.REPEATING),
])
def test_reason_of_a_finished_stream(finished, repeating, reason):
    assert from_finished(finished, repeating=repeating) is reason


@pytest.mark.parametrize("finished,reason", [
    (Finished("stop", Usage(12, 2), max_tokens=512), StopReason.EMPTY),
    (Finished("length", Usage(12, 8), max_tokens=8), StopReason.EMPTY),  # CI: the starter wrote "\n\n" and hit 8
    (Finished("cancelled", Usage(), max_tokens=512, cancelled=True), StopReason.STOPPED_BY_YOU),
])
def test_a_blank_reply_says_so_unless_you_stopped_it(finished, reason):
    assert from_finished(finished, blank=True) is reason
    assert "blank" in StopReason.EMPTY.sentence() and "ask again" in StopReason.EMPTY.sentence()


@pytest.mark.parametrize("exc,reason", [
    (EngineHTTPError(400, {"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 3024, "n_ctx": 2048,
                                     "message": "request (3024 tokens) exceeds the available context size "
                                                "(2048 tokens), try increasing it"}}), StopReason.CONTEXT_FULL),
    (EngineHTTPError(500, {"error": {"message": "Context size has been exceeded.", "type": "server_error"}},
                     mid_stream=True), StopReason.CONTEXT_FULL),
    (EngineHTTPError(500, {"error": {"message": "CUDA error: an illegal memory access"}}), StopReason.ENGINE_FAILED),
    (StreamBroken("the connection to the engine broke: peer closed connection without sending complete "
                  "message body (incomplete chunked read)"), StopReason.ENGINE_FAILED),
])
def test_reason_of_a_failed_stream(exc, reason):
    assert from_error(exc) is reason


def test_one_distinct_sentence_per_reason():
    assert set(SENTENCES) == set(StopReason)
    assert len(set(SENTENCES.values())) == len(StopReason)
    assert StopReason.REPEATING.sentence() == "Stopped: the model was repeating itself"
    assert StopReason.STOPPED_BY_YOU.sentence() == "Stopped by you"


def test_the_reply_limit_names_its_number():
    assert StopReason.REPLY_LIMIT.sentence(1024) == "Stopped: the reply reached its length limit (1,024 tokens)"
    assert StopReason.REPLY_LIMIT.sentence() == "Stopped: the reply reached its length limit"
    assert StopReason.FINISHED.sentence(1024) == "Finished: the model ended its reply"


def test_the_value_is_stable_for_json():
    assert [r.value for r in StopReason] == ["finished", "reply_limit", "repeating", "stopped_by_you",
                                             "context_full", "engine_failed", "empty"]
