"""`ember chat` with the real starter model, as a newcomer runs it (issue 11).

The starter is a base model without a chat template: `ember chat` says once that
it continues text, runs it in completion mode, and every reply it prints has no
template tokens, ends by itself within the reply limit, and names why it ended.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from engines import settings
from engines.chat import special_tokens
from engines.chat.completion_mode import COMPLETION_NOTE
from engines.chat.stop_reason import SENTENCES, StopReason

from ..conftest import ember_cmd

pytestmark = pytest.mark.slow

#: Any marker of a chat template or a special token a user could see.
MARKER = re.compile(r"<\|[^|>\s]{1,40}\|>|<(?:start|end)_of_(?:turn|image)>|<(?:bos|eos|pad|unk|mask)>|<unused\d+>")


def chat(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(ember_cmd("chat", "starter", "-q", *args), capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def _report(stderr: str) -> dict:
    """The stop reason `--json` prints: the last JSON line of stderr."""
    return json.loads([line for line in stderr.splitlines() if line.startswith("{")][-1])


def _clean(text: str) -> None:
    assert not MARKER.search(text), MARKER.search(text)
    assert special_tokens.strip(text) == text


def test_the_starter_says_once_what_it_is_and_its_loop_is_stopped(starter_path):
    """Greedy decoding loops on this prompt (tests/fixtures/replies: completion_france_t0)."""
    r = chat("--temperature", "0", "The capital of France is")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(COMPLETION_NOTE) == 1
    assert "starter" in r.stderr and "`ember models`" in r.stderr
    _clean(r.stdout)
    assert r.stdout.strip().startswith("the capital of the country of France")
    line = next(l for l in r.stderr.splitlines() if SENTENCES[StopReason.REPEATING] in l)
    tokens = int(re.search(r"\((\d[\d,]*) tokens", line).group(1).replace(",", ""))
    assert tokens < settings.DEFAULTS["reply_limit"] / 4  # stopped early, not at the limit
    assert r.stdout.count("It is the largest city in France.") <= 3


def test_json_names_the_stop_reason_and_the_default_limit_comes_from_the_settings(starter_path):
    r = chat("--temperature", "0", "--json", "The capital of France is")
    assert r.returncode == 0, r.stderr
    report = _report(r.stderr)
    assert report["stop_reason"] == "repeating" and report["sentence"] == SENTENCES[StopReason.REPEATING]
    assert report["max_tokens"] == settings.DEFAULTS["reply_limit"] == 1024
    assert report["tokens"] < 1024 and "repetition" in report


def test_a_sampled_reply_ends_within_the_limit_set_in_settings(fresh_home):
    """Default sampling (the starter rambles): whatever it writes ends by the reply_limit setting."""
    settings.update({"reply_limit": 96})  # in fresh_home, which the command inherits
    r = chat("--json", "How do I add two numbers in Python?")
    assert r.returncode == 0, r.stderr
    _clean(r.stdout)
    report = _report(r.stderr)
    assert report["max_tokens"] == 96 and report["tokens"] <= 96
    assert report["stop_reason"] in ("finished", "reply_limit", "repeating")
    assert report["sentence"] == StopReason(report["stop_reason"]).sentence(96)
