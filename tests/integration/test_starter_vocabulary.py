"""The template-token filter against the starter's own vocabulary (read with the `gguf` package).

Every control token of the real GGUF (``<bos>``, ``<eos>``, ``<start_of_turn>``,
thousands of ``<unusedNN>``...) and its media markers (``<start_of_image>``) are
removed from what people read; the HTML tags its vocabulary holds as ordinary
text tokens (``<table>``, ``<b>``) stay, since answers may contain markup.
"""
from __future__ import annotations

import re

import pytest

from engines.chat.special_tokens import strip

gguf = pytest.importorskip("gguf")

CONTROL, USER_DEFINED = 3, 4
HTML = re.compile(r"</?[a-z][a-z0-9]*>")


@pytest.fixture(scope="module")
def vocabulary(starter_path) -> dict[int, list[str]]:
    """Token texts of the starter by token type (about 10 s: 262,144 tokens)."""
    fields = gguf.GGUFReader(str(starter_path)).fields
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    out: dict[int, list[str]] = {}
    for i, idx in enumerate(tokens.data):
        kind = int(types.parts[types.data[i]][0])
        if kind in (CONTROL, USER_DEFINED):
            out.setdefault(kind, []).append(bytes(tokens.parts[idx]).decode("utf-8"))
    return out


def test_every_control_token_of_the_starter_is_removed(vocabulary):
    control = vocabulary[CONTROL]
    assert len(control) > 6000 and {"<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"} <= set(control)
    left = [t for t in control if strip(f"a {t} b") != "a b"]
    assert not left, left[:20]


def test_its_media_markers_go_and_its_html_tokens_stay(vocabulary):
    special = [t for t in vocabulary[USER_DEFINED] if t.startswith(("<", "[")) and not HTML.fullmatch(t)]
    assert {"<start_of_image>", "<end_of_image>", "[multimodal]"} <= set(special)
    assert [t for t in special if strip(f"a.{t}b") != "a. b"] == []
    html = [t for t in vocabulary[USER_DEFINED] if HTML.fullmatch(t)]
    assert {"<table>", "<b>", "</strong>", "<h2>"} <= set(html)
    assert [t for t in html if strip(f"a {t} b") != f"a {t} b"] == []
