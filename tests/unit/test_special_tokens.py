"""Template and special tokens never reach the text people read, however the stream splits them."""
from __future__ import annotations

import random

import pytest

from engines.chat.special_tokens import SpecialTokenFilter, strip

from tests.unit.replies import STARTER_REPLIES

CASES = [
    # what the starter writes under llama.cpp's ChatML fallback (tests/fixtures/replies)
    ("What is the capital of France?<|im_end|>\n<|im_start|>admin\nWhat is the capital of France?<|im_end|>",
     "What is the capital of France?\nWhat is the capital of France?"),
    # the report, markers between sentences
    ("What is the capital of the United Kingdom? <|im_start|> <|im_end|> What is the capital of the Soviet Union?",
     "What is the capital of the United Kingdom? What is the capital of the Soviet Union?"),
    ("<|im_start|>assistant\nParis is the capital.<|im_end|>", "Paris is the capital."),
    ("<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nHi", "Hello!\nHi"),
    ("<|start_header_id|>assistant<|end_header_id|>\n\nSure.<|eot_id|>", "Sure."),
    ("<s>[INST] hi [/INST] Hello</s>", " hi Hello"),
    ("<bos>Text<eos>", "Text"),
    ("Done.<|endoftext|>", "Done."),
    # the starter's seeded chat (tests/fixtures/replies): a role after a closer, a marker without its "<"
    ("Python?<|im_start|>\n<|im_end|>user\nHow to add? |im_end|>\n<|im_start|>assistant\nHow",
     "Python?\nHow to add? \nHow"),
    ("Paris is the capital of France.<|im_end", "Paris is the capital of France."),  # cut at the reply limit
    ("The end |im_e", "The end "),
    # text that only looks like markup stays
    ("if a < b and c<d: pass", "if a < b and c<d: pass"),
    ("Use <div> and <span> tags; x[0] = [1, 2]", "Use <div> and <span> tags; x[0] = [1, 2]"),
    ("a <|not closed", "a <|not closed"),
    ("| a | b |\n|---|---|", "| a | b |\n|---|---|"),
    ("x |> f |y|", "x |> f |y|"),
    ("The list [INFO] stays; <si> stays", "The list [INFO] stays; <si> stays"),
    ("Role words stay: <|im_start|>What is it?", "Role words stay: What is it?"),
]


@pytest.mark.parametrize("raw,shown", CASES)
def test_strip(raw, shown):
    assert strip(raw) == shown


def _stream(text: str, pieces: list[str]) -> str:
    f = SpecialTokenFilter()
    out = "".join(f.feed(p) for p in pieces) + f.flush()
    assert "".join(pieces) == text
    return out


@pytest.mark.parametrize("raw,shown", CASES)
def test_every_two_piece_split_gives_the_same_text(raw, shown):
    for i in range(len(raw) + 1):
        assert _stream(raw, [raw[:i], raw[i:]]) == shown, i


@pytest.mark.parametrize("raw,shown", CASES)
def test_one_character_at_a_time(raw, shown):
    assert _stream(raw, list(raw)) == shown


@pytest.mark.parametrize("name", sorted(STARTER_REPLIES))
def test_real_starter_streams_lose_every_marker(name):
    deltas = STARTER_REPLIES[name]["deltas"]
    raw = "".join(deltas)
    shown = _stream(raw, deltas)
    assert "<|" not in shown and "|>" not in shown and "<start_of_turn>" not in shown
    assert shown == strip(raw)
    rechunked = []
    rng = random.Random(11)
    i = 0
    while i < len(raw):
        n = rng.randint(1, 7)
        rechunked.append(raw[i:i + n])
        i += n
    assert _stream(raw, rechunked) == shown


def test_a_marker_is_held_until_complete_and_nothing_else_waits():
    f = SpecialTokenFilter()
    assert f.feed("Hello <|im_") == "Hello "
    assert f.feed("end|>") == ""  # the spaces after it may still come
    assert f.feed(" world.") == "world."
    assert f.feed(" Next") == " Next"
    assert f.flush() == ""
    assert f.removed == 1


def test_what_only_looked_like_a_marker_is_shown_at_the_end():
    f = SpecialTokenFilter()
    assert f.feed("x <") == "x "
    assert f.flush() == "<"


def test_a_reply_cut_mid_marker_drops_the_fragment():
    f = SpecialTokenFilter()
    assert f.feed("Paris.<|im_") == "Paris."
    assert f.flush() == ""
