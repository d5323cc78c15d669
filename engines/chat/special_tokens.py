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
#: Phi, Granite, gpt-oss's harmony, ``<|endoftext|>``), family by family. Only names that are
#: special tokens in their vocabulary and never words or markup: Gemma's ``<table>``, ``<b>`` and
#: ``<s>`` are ordinary text tokens (HTML), so Llama 2's ``<s>``/``</s>`` stay, as does ``[IMG]`` (BBCode).
NAMED_TOKENS = (
    # Gemma 1-3 (control tokens of the starter's vocabulary, and its media markers; the
    # starter writes <start_of_image> where a web page had a picture)
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>", "<mask>",
    "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_audio>", "<end_of_audio>",
    "<audio_soft_token>", "[multimodal]",
    # Llama 2, Mistral (v1-v3 and tekken's control tokens)
    "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
    "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
    # ChatGLM
    "[gMASK]", "<sop>", "<eop>",
)
#: Numbered families: Gemma's thousands of ``<unusedNN>`` control tokens; DeepSeek's markers with
#: full-width bars (``<｜begin▁of▁sentence｜>``, ``<｜Assistant｜>``).
_NUMBERED = r"<unused\d{1,5}>|<\uff5c[^\uff5c<>\n]{1,40}\uff5c>"

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
           rf"|<\|[A-Za-z0-9_.:-]{{1,40}}\|>|{_BARE}|{_NAMED}|{_NUMBERED}")
#: A marker; after a space, the spaces after it go too ("Kingdom? <|im_end|> What" reads "Kingdom? What").
_TOKEN = re.compile(rf"(?<=[ \t])(?:{_MARKER})[ \t]*|(?:{_MARKER})")

#: The tail that may still change: the start of a marker (``<``, ``<|im_e``, ``|im_e``, ``</``, ``[/IN``,
#: ``<<SY``, ``<unused12``, ``[multimo``), a turn opener or closer whose role line is not finished, or a whole marker whose following
#: spaces may come next.
_PARTIAL = re.compile(
    rf"(?:(?:{_TURN_OPENERS})[ \t]*[A-Za-z_]{{0,20}}[ \t]*|(?:{_TURN_CLOSERS})[a-z]{{0,9}}[ \t]*"
    r"|<\|start_header_id\|>[^<\n]{0,20}(?:<\|?[a-z_]*\|?)?"
    rf"|<?\|[A-Za-z0-9_.:-]{{0,40}}\|?|<<?/?[A-Za-z0-9_]{{0,20}}|\[/?[A-Za-z_]{{0,17}}"
    r"|<\uff5c[^\uff5c<>\n]{0,40}\uff5c?"
    rf"|(?:{_MARKER})[ \t]*)\Z")
#: What a reply cut off mid-marker ends with; never prose, so it is dropped at the end of the stream.
_DANGLING = re.compile(r"(?:<\|[A-Za-z0-9_.:-]{0,40}|\|(?:im|eot|eom|end|start)_[a-z_]{0,20})\|?\Z")
_TAIL = 80  # no partial marker is longer than this


#: A marker between these keeps the words apart: "France.<start_of_image>Paris" reads "France. Paris".
_GLUE_BEFORE = re.compile(r"[\w.,;:!?)\"'\u2019\u201d]")
_GLUE_AFTER = re.compile(r"[\w(\"'\u2018\u201c]")
#: Where markers were taken out, until what follows them is known (a role line: _GAP_LINE).
_GAP, _GAP_LINE = "\x00", "\x01"
_GAPS = re.compile("[\x00\x01]+")
_OPEN_GAP = re.compile("[\x00\x01]+\\Z")


def _mark(m: re.Match) -> str:
    """A marker after a space goes with the spaces after it; any other leaves a gap to close."""
    if m.start() and m.string[m.start() - 1] in " \t":
        return ""
    return _GAP_LINE if "\n" in m.group() else _GAP


def _close_gaps(text: str, before: str, final: bool) -> tuple[str, str]:
    """Each run of gaps becomes a space (a line break after a role line) between two words, else nothing.

    ``before``: the character shown just before ``text``. Unless ``final``, a run at the very end
    stays open (returned second): what follows it decides.
    """
    still_open = ""
    if not final and (m := _OPEN_GAP.search(text)):
        text, still_open = text[:m.start()], m.group()

    def close(m: re.Match) -> str:
        prev = m.string[m.start() - 1] if m.start() else before
        after = m.string[m.end()] if m.end() < len(m.string) else ""
        if prev and after and _GLUE_BEFORE.match(prev) and _GLUE_AFTER.match(after):
            return "\n" if _GAP_LINE in m.group() else " "
        return ""

    return _GAPS.sub(close, text), still_open


def strip(text: str) -> str:
    """A whole reply without any template or special token (what the filter gives for it as a stream)."""
    return _close_gaps(_TOKEN.sub(_mark, _DANGLING.sub("", text)), "", final=True)[0]


class SpecialTokenFilter:
    """Feed it text deltas; it returns what may be shown now, holding back a marker's possible start."""

    def __init__(self) -> None:
        self._pending = ""
        self._before = "\n"  # the last character released, which decides whether spaces after a marker go
        self._shown = ""  # the last character shown, which decides whether a gap becomes a space
        self._gap = ""  # markers taken out at the end of what was released, not closed yet
        self.removed = 0  # how many markers were taken out, for logs and tests

    def feed(self, delta: str) -> str:
        text = self._pending + delta
        cut = _hold_from(text)
        self._pending = text[cut:]
        return self._clean(text[:cut])

    def flush(self) -> str:
        """The rest at the end of the stream: an unfinished ``<|...`` is dropped, anything else is shown."""
        text, self._pending = self._pending, ""
        return self._clean(_DANGLING.sub("", text), final=True)

    def _clean(self, text: str, final: bool = False) -> str:
        if not text and not (final and self._gap):
            return ""
        out, n = _TOKEN.subn(_mark, self._before + text)
        self._before = text[-1] if text else self._before
        if n:
            self.removed += n
            log.debug("removed %d template token(s) from a reply", n)
        out, self._gap = _close_gaps(self._gap + out[1:], self._shown, final)
        self._shown = out[-1] if out else self._shown
        return out


def _hold_from(text: str) -> int:
    """Where the part of ``text`` that may still change starts (``len(text)``: none)."""
    start = max(0, len(text) - _TAIL)
    for m in _PARTIAL.finditer(text, start):
        if m.end() == len(text):
            return m.start()
    return len(text)
