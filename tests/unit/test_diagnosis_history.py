"""A prompt that counted earlier turns is the conversation's length, not the message's: the words say
"This conversation needs", and the dialog's facts "Conversation tokens". The request's turns travel
on the error the client raises (``EngineHTTPError.turns``)."""
from __future__ import annotations

import json

import httpx
import pytest

from engines.chat.client import ChatStream, EngineHTTPError
from engines.diagnosis import diagnose
from engines.running import launch

REFUSAL = {"error": {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 900, "n_ctx": 512,
                     "message": "the request exceeds the available context size, try increasing it"}}


def refused(messages: list[dict]) -> EngineHTTPError:
    transport = httpx.MockTransport(lambda request: httpx.Response(400, content=json.dumps(REFUSAL).encode()))
    with pytest.raises(EngineHTTPError) as err:
        list(ChatStream("http://engine/v1", messages, client=httpx.Client(transport=transport)))
    return err.value


@pytest.fixture
def plan(starter_spec, hw):
    return launch.plan(starter_spec, hw, overrides={"n_ctx": 512})


def test_one_message_is_the_messages_length(plan):
    exc = refused([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi " * 900}])
    assert exc.turns == 1
    d = diagnose.diagnose_exception(exc, plan=plan)
    assert d.explanation.startswith("Your message needs 900 tokens; each slot holds 512")
    assert "history" not in d.facts


def test_with_history_counted_it_is_the_conversations(plan):
    exc = refused([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                   {"role": "user", "content": "and again " * 300}])
    assert exc.turns == 3
    d = diagnose.diagnose_exception(exc, plan=plan)
    assert d.explanation.startswith("This conversation needs 900 tokens; each slot holds 512")
    assert d.facts["history"] is True


def test_the_dialog_says_conversation_tokens(qtbot, plan):
    from desktop.diagnosis_dialog import DiagnosisDialog
    exc = refused([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}])
    dlg = DiagnosisDialog(diagnose.diagnose_exception(exc, plan=plan))
    qtbot.addWidget(dlg)
    assert "Conversation\u00a0tokens:\u00a0900" in dlg.facts_label.text()
    assert "Message" not in dlg.facts_label.text()
