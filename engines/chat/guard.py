"""Notice a reply that loops, so Ember can stop it and say why.

A model run without the right chat template (or a small model at any
temperature) can repeat itself until the reply limit: the starter answered
"What is the capital of France?" with that same question again and again for
1,024 tokens. :class:`RepetitionGuard` is fed the text deltas of one reply and
reports a :class:`Repetition` as soon as the text loops; the caller then
cancels the stream and shows :attr:`StopReason.REPEATING`.

Three rules, each about the *end* of the text (a loop is what the reply is
doing now, not a phrase it once used twice):

* ``units``: the last sentences or lines are copies of one block of 1-4
  sentences (3 copies; 8 when the block is shorter than ``min_words``; list
  numbers and bullets are ignored, so "1. X 2. X 3. X" counts).
* ``pattern``: consecutive sentences of one frame ("What is the capital of the
  United Kingdom?" ... "of the Soviet Union?"): same first words, not list
  items, ``pattern_repeats`` in a row. The price: eight un-numbered quiz
  questions of one frame in a row read as a loop (numbered ones do not).
* ``span``: the last tokens are copies of one span of any length up to
  ``max_period`` tokens (3 copies and at least ``min_span_tokens`` tokens), which
  also catches loops with no sentence ends.

Two more watch the engine's raw pieces, before the template-token filter
(:class:`DeltaRun`): ``delta``, one piece sent ``same_deltas`` times in a row
(the starter writes ``<start_of_image>`` or a line break to the reply limit),
and ``hidden``, ``hidden_deltas`` pieces in a row that show no text
(template tokens and blank lines, which the text rules never see).

Normal text does not trip them: list items, table rows and code lines differ;
a song's chorus comes back after a verse, not back to back; inside a fenced
code block, the thresholds are higher (``code_copies``), since code can repeat
a line legitimately.

:class:`ReplyWatch` puts one reply's pieces together for the chat window and
``ember chat``: template tokens filtered out of what is shown, the guard, and
the stop reason.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from engines.chat.client import Delta, Finished
from engines.chat.special_tokens import SpecialTokenFilter
from engines.chat.stop_reason import StopReason, from_finished

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardConfig:
    """The guard's thresholds (defaults set against the texts in tests/fixtures/replies)."""

    copies: int = 3                # back-to-back copies of a block that make a loop
    code_copies: int = 12          # the same inside a fenced code block (a zero matrix repeats rows)
    short_copies: int = 8          # copies of a block shorter than min_words ("Yes. Yes. ...")
    min_words: int = 4
    max_block_units: int = 4       # the longest block of sentences the ``units`` rule looks for
    pattern_words: int = 5         # first words two sentences must share to have one frame
    pattern_repeats: int = 8       # a poem's anaphora runs shorter than this
    ngram: int = 12                # tokens that index the ``span`` rule
    max_period: int = 600          # the longest repeated span, in tokens
    min_span_tokens: int = 48
    code_min_span_tokens: int = 300
    same_deltas: int = 32          # the engine sent one piece this many times in a row ("<start_of_image>", "\n")
    hidden_deltas: int = 24        # pieces in a row that showed no text (template tokens, blank lines)


@dataclass(frozen=True)
class Repetition:
    """What looped: the rule that noticed it, the repeated text (shortened), and how many copies."""

    rule: str
    text: str
    copies: int

    def describe(self) -> str:
        if self.rule == "pattern":
            return f'{self.copies} sentences in a row of one pattern, like "{_shorten(self.text)}"'
        if self.rule == "hidden":
            return f'{self.copies} pieces in a row with no text, like "{_shorten(self.text)}"'
        return f'the same text {self.copies} times in a row: "{_shorten(self.text)}"'


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"  # kana, CJK ideographs, hangul
_WORDS = re.compile(rf"[{_CJK}]|\w+")  # a CJK character counts as a word
_TOKENS = re.compile(rf"[{_CJK}]|\w+|[^\w\s]+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+\u2022>]|#+|\(?\d{1,3}[.)]|[a-zA-Z][.)](?=\s))\s+")
_SENTENCE_END = re.compile(r"(?<=[.?!])[\"')\]]*\s+|(?<=[\u3002\uff1f\uff01])|\n")  # CJK: no space after
_LIST_NUMBER = re.compile(r"\s*(?:\d{1,3}|[a-zA-Z])\.\Z")
_LINES = re.compile(r"(?<=\n)")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class _Unit:
    text: str          # as written, for the message
    key: str           # normalized: lower case, no list marker, spaces collapsed
    words: tuple[str, ...]
    listed: bool       # began with a list marker or number


def _unit(raw: str) -> _Unit | None:
    text = raw.strip()
    if not text:
        return None
    body = _LIST_MARKER.sub("", text)
    words = tuple(w.lower() for w in _WORDS.findall(body))
    return _Unit(text, " ".join(body.lower().split()), words, body != text)


def _shorten(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


class RepetitionGuard:
    """Feed it one reply's text deltas; :meth:`feed` returns a :class:`Repetition` once the text loops."""

    def __init__(self, config: GuardConfig | None = None):
        self.config = config or GuardConfig()
        self.tripped: Repetition | None = None
        self._pending_unit = ""
        self._pending_token = ""
        self._in_code = False
        self._units: list[_Unit] = []
        self._tokens: list[str] = []
        self._seen: dict[tuple[str, ...], list[int]] = {}

    def feed(self, text: str) -> Repetition | None:
        if self.tripped is not None:
            return self.tripped
        for line in _LINES.split(text):  # line by line: a code fence changes the thresholds from the next line
            self._feed_tokens(line)
            if self.tripped is None:
                self._feed_units(line)
            if self.tripped is not None:
                log.info("reply stopped: %s", self.tripped.describe())
                break
        return self.tripped

    # -- sentences and lines --------------------------------------------------------------------

    def _feed_units(self, text: str) -> None:
        self._pending_unit += text
        while self.tripped is None:
            end, cut = self._unit_end(self._pending_unit)
            if end < 0:
                return
            raw, self._pending_unit = self._pending_unit[:end], self._pending_unit[cut:]
            self._add_unit(raw)

    def _unit_end(self, text: str) -> tuple[int, int]:
        """Where the first complete sentence (a line, in code) of ``text`` ends, and where the next begins."""
        if self._in_code:
            end = text.find("\n")
            return end, end + 1
        for m in _SENTENCE_END.finditer(text):
            if not _LIST_NUMBER.match(text[:m.start()]):  # "1. " starts a list item, it ends nothing
                return m.start(), m.end()
        return -1, -1

    def _add_unit(self, raw: str) -> None:
        if _FENCE.match(raw):
            self._in_code = not self._in_code
            self._units.clear()  # a loop does not span the fence
            return
        unit = _unit(raw)
        if unit is None:
            return
        self._units.append(unit)
        del self._units[:-64]
        self.tripped = self._block_loop() or self._pattern_loop()

    def _block_loop(self) -> Repetition | None:
        c, units = self.config, self._units
        for size in range(1, c.max_block_units + 1):
            block = units[-size:]
            short = sum(len(u.words) for u in block) < c.min_words
            need = c.code_copies if self._in_code else c.short_copies if short else c.copies
            if len(units) < size * need:
                continue
            keys = [u.key for u in block]
            if all([u.key for u in units[-size * (i + 1):len(units) - size * i]] == keys for i in range(1, need)):
                return Repetition("units", " ".join(u.text for u in block), need)
        return None

    def _pattern_loop(self) -> Repetition | None:
        c = self.config
        recent = self._units[-c.pattern_repeats:]
        if self._in_code or len(recent) < c.pattern_repeats:
            return None
        frame = recent[0].words[:c.pattern_words]
        if len(frame) < c.pattern_words or any(u.listed or u.words[:c.pattern_words] != frame for u in recent):
            return None
        return Repetition("pattern", recent[-1].text, c.pattern_repeats)

    # -- tokens ---------------------------------------------------------------------------------

    def _feed_tokens(self, text: str) -> None:
        text = self._pending_token + text
        split = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"), text.rfind("\u3002"))
        self._pending_token = text[split + 1:]
        for token in _TOKENS.findall(text[:split + 1]):
            self._add_token(token.lower())
            if self.tripped is not None:
                return

    def _add_token(self, token: str) -> None:
        c, tokens = self.config, self._tokens
        tokens.append(token)
        if len(tokens) < c.ngram:
            return
        at = len(tokens)
        seen = self._seen.setdefault(tuple(tokens[-c.ngram:]), [])
        seen.append(at)
        del seen[:-3]
        if len(seen) < 3 or at - seen[1] != seen[1] - seen[0]:
            return
        period = at - seen[1]
        if period <= c.max_period:
            self.tripped = self._span_loop(period)

    def _span_loop(self, period: int) -> Repetition | None:
        c, tokens = self.config, self._tokens
        min_tokens, min_copies = ((c.code_min_span_tokens, c.code_copies) if self._in_code
                                  else (c.min_span_tokens, c.copies))
        copies = max(min_copies, -(-min_tokens // period))
        if len(tokens) < copies * period:
            return None
        block = tokens[-period:]
        if not any(t[0].isalnum() for t in block):
            return None  # a rule line of a table or ASCII art, not words
        for i in range(1, copies):
            if tokens[len(tokens) - period * (i + 1):len(tokens) - period * i] != block:
                return None
        return Repetition("span", " ".join(block), copies)


class DeltaRun:
    """The raw pieces of one reply: one piece over and over, or a run of pieces that show nothing."""

    def __init__(self, config: GuardConfig | None = None):
        self.config = config or GuardConfig()
        self.tripped: Repetition | None = None
        self._last, self._same, self._hidden = None, 0, 0

    def feed(self, raw: str, shown: bool) -> Repetition | None:
        """``shown``: whether this piece showed any text (not only spaces) after the filter."""
        if self.tripped is not None or not raw:
            return self.tripped
        self._same = self._same + 1 if raw == self._last else 1
        self._last = raw
        self._hidden = 0 if shown else self._hidden + 1
        c = self.config
        if self._same >= c.same_deltas:
            self.tripped = Repetition("delta", raw, self._same)
        elif self._hidden >= c.hidden_deltas:
            self.tripped = Repetition("hidden", raw, self._hidden)
        if self.tripped is not None:
            log.info("reply stopped: %s", self.tripped.describe())
        return self.tripped


class ReplyWatch:
    """One reply as people see it: template tokens removed, loops noticed, the stop reason named.

    Wiring (``ember chat``, the chat window)::

        watch = ReplyWatch()
        for ev in stream:
            if isinstance(ev, Delta):
                shown = watch.feed(ev)          # None when nothing is to be shown yet
                ...show shown.text...
                if watch.repeating:
                    stream.cancel()             # the stream then ends with a cancelled Finished
            elif isinstance(ev, Finished):
                ...show each of watch.flush()...
                status = watch.reason(ev).sentence(ev.max_tokens)
    """

    def __init__(self, config: GuardConfig | None = None):
        self._filters = {False: SpecialTokenFilter(), True: SpecialTokenFilter()}
        self._guards = {False: RepetitionGuard(config), True: RepetitionGuard(config)}
        self._runs = {False: DeltaRun(config), True: DeltaRun(config)}
        self.text = ""  # the answer as shown (without reasoning): what a conversation keeps
        self.reasoning_text = ""

    @property
    def repeating(self) -> Repetition | None:
        return next((x.tripped for x in (*self._runs.values(), *self._guards.values()) if x.tripped), None)

    def feed(self, delta: Delta) -> Delta | None:
        shown = self._filters[delta.reasoning].feed(delta.text)
        self._runs[delta.reasoning].feed(delta.text, bool(shown.strip()))
        return self._show(shown, delta.reasoning)

    def flush(self) -> list[Delta]:
        """What the filters still hold at the end of the stream (reasoning first)."""
        out = [self._show(self._filters[r].flush(), r) for r in (True, False)]
        return [d for d in out if d is not None]

    def reason(self, finished: Finished) -> StopReason:
        return from_finished(finished, repeating=self.repeating is not None,
                             blank=not self.text.strip() and not self.reasoning_text.strip())

    def _show(self, text: str, reasoning: bool) -> Delta | None:
        if not text:
            return None
        self._guards[reasoning].feed(text)
        if reasoning:
            self.reasoning_text += text
        else:
            self.text += text
        return Delta(text, reasoning)
