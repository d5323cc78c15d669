"""The repetition guard stops real loops early and lets normal answers through (table-driven).

Each text is fed as a stream: in the deltas the engine really sent (the starter's
captured replies) or in small random pieces (the hand-written texts), through
:class:`ReplyWatch`, as the chat window and ``ember chat`` will.
"""
from __future__ import annotations

import random

import pytest

from engines.chat.client import Delta, Finished, Usage
from engines.chat.guard import GuardConfig, RepetitionGuard, ReplyWatch
from engines.chat.stop_reason import StopReason
from tests.unit.replies import LOOPS, NORMAL, STARTER_REPLIES


def _pieces(text: str, seed: int) -> list[str]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 9)
        out.append(text[i:i + n])
        i += n
    return out


def _watch(pieces: list[str], reasoning: bool = False) -> tuple[ReplyWatch, int]:
    """Feed pieces until the guard trips; returns the watch and how many characters it had read."""
    watch, read = ReplyWatch(), 0
    for piece in pieces:
        watch.feed(Delta(piece, reasoning))
        read += len(piece)
        if watch.repeating:
            break
    watch.flush()
    return watch, read


@pytest.mark.parametrize("name", sorted(NORMAL))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_normal_answers_are_not_stopped(name, seed):
    watch, _ = _watch(_pieces(NORMAL[name], seed))
    assert watch.repeating is None, watch.repeating.describe()


@pytest.mark.parametrize("name", sorted(NORMAL))
def test_normal_answers_in_one_piece_and_as_reasoning_are_not_stopped(name):
    assert _watch([NORMAL[name]])[0].repeating is None
    assert _watch(_pieces(NORMAL[name], 9), reasoning=True)[0].repeating is None


#: loop -> (the rules that may notice it first, share of the text read by then at most)
LOOP_CASES = {
    "answer_then_loop.txt": ({"units"}, 0.45),
    "code.md": ({"units"}, 0.6),
    "issue_capitals.txt": ({"pattern"}, 0.6),
    "no_punctuation.txt": ({"span"}, 0.45),
    "numbered.txt": ({"units"}, 0.3),
    "paragraph.txt": ({"units", "span"}, 0.45),  # a two-sentence block: both rules see it at the same token
    "word_run.txt": ({"span"}, 0.5),
}


def test_every_loop_fixture_has_a_case():
    assert set(LOOP_CASES) == set(LOOPS)


@pytest.mark.parametrize("name", sorted(LOOP_CASES))
@pytest.mark.parametrize("seed", [1, 2])
def test_loops_are_stopped_early(name, seed):
    rules, share = LOOP_CASES[name]
    text = LOOPS[name]
    watch, read = _watch(_pieces(text, seed))
    assert watch.repeating is not None
    assert watch.repeating.rule in rules, watch.repeating
    assert read <= share * len(text), f"noticed only after {read} of {len(text)} characters"
    assert "<|" not in watch.text


@pytest.mark.parametrize("name", sorted(n for n, r in STARTER_REPLIES.items() if r["loops"]))
def test_the_starters_real_loops_are_stopped_early(name):
    """The starter's own output (captured from llama.cpp, see the fixtures' README), as it streamed."""
    deltas = STARTER_REPLIES[name]["deltas"]  # one token each
    watch, read = _watch(deltas)
    assert watch.repeating is not None
    tokens_read = next(i for i in range(len(deltas) + 1) if len("".join(deltas[:i])) >= read)
    assert tokens_read <= 0.6 * len(deltas), f"noticed only after {tokens_read} of {len(deltas)} tokens"
    assert "<|" not in watch.text and "|>" not in watch.text
    ended = Finished("cancelled", Usage(), max_tokens=STARTER_REPLIES[name]["request"]["max_tokens"], cancelled=True)
    assert watch.reason(ended) is StopReason.REPEATING
    assert watch.reason(ended).sentence() == "Stopped: the model was repeating itself"


@pytest.mark.parametrize("name", sorted(n for n, r in STARTER_REPLIES.items() if not r["loops"]))
def test_the_starters_real_replies_that_do_not_loop_run_to_their_end(name):
    reply = STARTER_REPLIES[name]
    watch, _ = _watch(reply["deltas"])
    assert watch.repeating is None
    ended = Finished(reply["finish_reason"], Usage(None, len(reply["deltas"])),
                     max_tokens=reply["request"]["max_tokens"])
    assert watch.reason(ended) is (StopReason.REPLY_LIMIT if reply["finish_reason"] == "length"
                                   else StopReason.FINISHED)


def test_the_guard_keeps_its_verdict():
    guard = RepetitionGuard()
    for _ in range(3):
        guard.feed("The capital of France is Paris.\n")
    first = guard.tripped
    assert first is not None and first.copies == 3 and "Paris" in first.describe()
    assert guard.feed("Something new entirely, and long enough to count.\n") is first


@pytest.mark.parametrize("copies,trips", [(2, False), (3, True)])
def test_three_back_to_back_copies_make_a_loop(copies, trips):
    guard = RepetitionGuard()
    guard.feed("I think the answer is forty two. " * copies + "\n")
    assert (guard.tripped is not None) is trips


def test_short_sentences_need_more_copies():
    guard = RepetitionGuard()
    guard.feed("Yes. " * 7 + "\n")
    assert guard.tripped is None
    guard.feed("Yes. \n")
    assert guard.tripped is not None


def test_a_refrain_after_other_text_is_not_a_loop():
    chorus = "Carry me home on the evening tide, carry me home where the lanterns glow.\n"
    guard = RepetitionGuard()
    for verse in ("Morning light on the harbour wall.\n", "Salt and rope and a sailor's song.\n",
                  "And if the storm should find us, love.\n"):
        guard.feed(verse + chorus)
    assert guard.tripped is None


def test_thresholds_are_configurable():
    guard = RepetitionGuard(GuardConfig(copies=5))
    guard.feed("The capital of France is Paris.\n" * 4)
    assert guard.tripped is None
    guard.feed("The capital of France is Paris.\n")
    assert guard.tripped is not None and guard.tripped.copies == 5


def test_reasoning_and_answer_are_judged_apart():
    watch = ReplyWatch()
    for _ in range(2):
        watch.feed(Delta("Let me check the sum again carefully.\n", reasoning=True))
        watch.feed(Delta("Let me check the sum again carefully.\n"))
    assert watch.repeating is None  # two copies in each, not four in one
    assert watch.text == "Let me check the sum again carefully.\n" * 2


@pytest.mark.parametrize("text,loops", [
    ("巴黎是法国的首都。" * 3, True),
    ("巴黎是法国的首都。它也是法国最大的城市。塞纳河穿过巴黎。埃菲尔铁塔在巴黎。", False),
])
def test_text_without_spaces_is_judged_too(text, loops):
    guard = RepetitionGuard()
    for piece in _pieces(text, 5):
        guard.feed(piece)
    assert (guard.tripped is not None) is loops


# -- the engine's raw pieces ------------------------------------------------------------------------

def _sentence_then(run: list[str]) -> list[str]:
    """A real first sentence of the starter in completion mode, then ``run`` (what was measured)."""
    return [" Paris", " is", " the", " capital", " of", " France", "."] + run


@pytest.mark.parametrize("run,rule", [
    (["<start_of_image>"] * 1017, "hidden"),           # measured: the sentence, then this to the 1,024 limit
    (["<start_of_image>", "<end_of_image>"] * 500, "hidden"),
    (["<start_of_image>", "\n"] * 500, "hidden"),     # blank lines between markers show no text either
    (["\n"] * 1000, "hidden"),
    ([" very"] * 1000, "delta"),                      # one word-piece: before the span rule's 48 tokens
    ([" very", " good"] * 500, "span"),
])
def test_one_piece_over_and_over_is_stopped_even_when_it_shows_nothing(run, rule):
    pieces = _sentence_then(run)
    watch, n = ReplyWatch(), 0
    for n, piece in enumerate(pieces, start=1):
        watch.feed(Delta(piece))
        if watch.repeating:
            break
    watch.flush()
    assert watch.repeating is not None and watch.repeating.rule == rule, watch.repeating
    assert n <= 7 + 50, n  # within a few dozen pieces, not at the limit
    assert watch.text.startswith(" Paris is the capital of France.") and "<" not in watch.text
    assert watch.reason(Finished("cancelled", Usage(), max_tokens=1024, cancelled=True)) is StopReason.REPEATING


def test_a_special_token_now_and_then_is_not_a_loop():
    """The starter's seeded reply (tests/fixtures/replies) writes <start_of_image> between paragraphs."""
    pieces = []
    for i in range(40):
        pieces += [f" Sentence", f" number {i}", " is", " here", ".", "<start_of_image>"]
    watch, _ = _watch(pieces)
    assert watch.repeating is None
    assert "Sentence number 39 is here." in watch.text and "<" not in watch.text


def test_the_raw_rules_are_configurable():
    watch = ReplyWatch(GuardConfig(same_deltas=5, hidden_deltas=100))
    for _ in range(4):
        watch.feed(Delta("<eos>"))
    assert watch.repeating is None
    watch.feed(Delta("<eos>"))
    assert watch.repeating.rule == "delta" and watch.repeating.copies == 5
    assert 'the same text 5 times in a row: "<eos>"' == watch.repeating.describe()


@pytest.mark.parametrize("pieces,reasoning,reason", [
    (["\n", "\n"], False, StopReason.EMPTY),                       # CI saw the starter answer "Say hello." so
    (["<start_of_image>", "\n", "<end_of_image>"], False, StopReason.EMPTY),  # markers removed: nothing left
    (["Hello", "!"], False, StopReason.FINISHED),
    (["The user greets me."], True, StopReason.FINISHED),           # only reasoning came: not blank
])
def test_a_reply_that_shows_nothing_is_named_not_called_finished(pieces, reasoning, reason):
    watch = ReplyWatch()
    for piece in pieces:
        watch.feed(Delta(piece, reasoning))
    watch.flush()
    assert watch.reason(Finished("stop", Usage(5, len(pieces)), max_tokens=8)) is reason
