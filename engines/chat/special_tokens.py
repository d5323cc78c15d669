"""Strip chat-template and special tokens from reply text before anyone reads it.

A model without a chat template (or run with the wrong one) writes the
template's markers as text: ``<|im_start|>admin`` ... ``<|im_end|>``. Those
are never part of an answer. :class:`SpecialTokenFilter` removes them from a
stream of text deltas; a marker split across two deltas (``<|im_`` then
``end|>``) is held back until it is complete, so the user never sees half of
one. Only text shown to people goes through it: the raw API is left as the
engine behaves.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

#: Markers without a ``<|name|>`` shape (that shape is always a special token: ChatML, Llama 3,
#: Phi, gpt-oss's harmony, ``<|endoftext|>``).
NAMED_TOKENS = ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<s>", "</s>",
                "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")

#: Markers that open a turn; the role name written after them (``user``, ``assistant``, or
#: whatever a base model invents, such as ``admin``) and its line break are template too.
_TURN_OPENERS = r"<\|im_start\|>|<start_of_turn>"
_ROLE = r"[ \t]*[A-Za-z_]{1,20}[ \t]*(?:\r?\n|(?=<))"
#: Markers that close a turn; a base model sometimes writes the next role right after them.
_TURN_CLOSERS = r"<\|im_end\|>|<end_of_turn>"
_NEXT_ROLE = r"(?:system|user|assistant|model)[ \t]*\r?\n"
#: ChatML and Llama 3 marker names, also when a model writes them without their ``<`` (`` |im_end|>``).
_BARE = r"\|(?:im_start|im_end|im_sep|endoftext|eot_id|eom_id|start_header_id|end_header_id)\|>"

_NAMED = "|".join(re.escape(t) for t in NAMED_TOKENS)
_MARKER = (rf"(?:{_TURN_OPENERS})(?:{_ROLE})?"                       # a turn opener with its role line
           rf"|(?:{_TURN_CLOSERS})(?:{_NEXT_ROLE})?"                  # a turn closer, with a role after it
           r"|<\|start_header_id\|>[^<\n]{0,20}<\|end_header_id\|>\n{0,2}"  # Llama 3's header
           rf"|<\|[A-Za-z0-9_.:-]{{1,40}}\|>|{_BARE}|{_NAMED}")
#: A marker; after a space, the spaces after it go too ("Kingdom? <|im_end|> What" reads "Kingdom? What").
_TOKEN = re.compile(rf"(?<=[ \t])(?:{_MARKER})[ \t]*|(?:{_MARKER})")

#: The tail that may still change: the start of a marker (``<``, ``<|im_e``, ``|im_e``, ``</``, ``[/IN``,
#: ``<<SY``), a turn opener or closer whose role line is not finished, or a whole marker whose following
#: spaces may come next.
_PARTIAL = re.compile(
    rf"(?:(?:{_TURN_OPENERS})[ \t]*[A-Za-z_]{{0,20}}[ \t]*|(?:{_TURN_CLOSERS})[a-z]{{0,9}}[ \t]*"
    r"|<\|start_header_id\|>[^<\n]{0,20}(?:<\|?[a-z_]*\|?)?"
    rf"|<?\|[A-Za-z0-9_.:-]{{0,40}}\|?|<<?/?[A-Za-z_]{{0,14}}|\[/?[A-Z]{{0,4}}|(?:{_MARKER})[ \t]*)\Z")
#: What a reply cut off mid-marker ends with; never prose, so it is dropped at the end of the stream.
_DANGLING = re.compile(r"(?:<\|[A-Za-z0-9_.:-]{0,40}|\|(?:im|eot|eom|end|start)_[a-z_]{0,20})\|?\Z")
_TAIL = 80  # no partial marker is longer than this


def strip(text: str) -> str:
    """A whole reply without any template or special token (what the filter gives for it as a stream)."""
    return _TOKEN.sub("", _DANGLING.sub("", text))


class SpecialTokenFilter:
    """Feed it text deltas; it returns what may be shown now, holding back a marker's possible start."""

    def __init__(self) -> None:
        self._pending = ""
        self._before = "\n"  # the last character released, which decides whether spaces after a marker go
        self.removed = 0  # how many markers were taken out, for logs and tests

    def feed(self, delta: str) -> str:
        text = self._pending + delta
        cut = _hold_from(text)
        self._pending = text[cut:]
        return self._clean(text[:cut])

    def flush(self) -> str:
        """The rest at the end of the stream: an unfinished ``<|...`` is dropped, anything else is shown."""
        text, self._pending = self._pending, ""
        return self._clean(_DANGLING.sub("", text))

    def _clean(self, text: str) -> str:
        if not text:
            return ""
        out, n = _TOKEN.subn("", self._before + text)
        self._before = text[-1]
        if n:
            self.removed += n
            log.debug("removed %d template token(s) from a reply", n)
        return out[1:]


def _hold_from(text: str) -> int:
    """Where the part of ``text`` that may still change starts (``len(text)``: none)."""
    start = max(0, len(text) - _TAIL)
    for m in _PARTIAL.finditer(text, start):
        if m.end() == len(text):
            return m.start()
    return len(text)
