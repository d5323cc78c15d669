"""One reply streamed to a terminal (``ember chat``, ``ember remote chat``) as people should read it.

The reply goes to stdout through :class:`~engines.chat.guard.ReplyWatch`:
template and special tokens never shown, a loop cancelled; then one line on
stderr names why it ended (the stop reason's sentence, with the token count
and speed), or one JSON object with ``--json``. Ctrl-C stops the reply, not the
program.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

from engines.chat.client import ChatStream, Delta, Finished
from engines.chat.guard import ReplyWatch
from engines.chat.stop_reason import StopReason

log = logging.getLogger(__name__)


class TerminalReply:
    """One reply streamed to ``out`` as people see it: template tokens out, loops stopped."""

    def __init__(self, stream: ChatStream, as_json: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None):
        self.stream, self.as_json = stream, as_json
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.watch = ReplyWatch()
        self.pieces = 0
        self.finished: Finished | None = None

    def run(self) -> None:
        """Stream to ``out``; exceptions from the stream propagate, Ctrl-C stops the reply."""
        try:
            for ev in self.stream:
                if isinstance(ev, Delta):
                    self.pieces += 1
                    self._write(self.watch.feed(ev))
                    if self.watch.repeating and not self.stream.cancelled:
                        self.stream.cancel()
                elif isinstance(ev, Finished):
                    self.finished = ev
        except KeyboardInterrupt:
            self.stream.cancel()
            self.finished = Finished("cancelled", max_tokens=self.stream.options.get("max_tokens"), cancelled=True)
        finally:
            for d in self.watch.flush():
                self._write(d)
            self.out.write("\n")
            self.out.flush()

    def _write(self, shown: Delta | None) -> None:
        if shown is not None and not shown.reasoning:
            self.out.write(shown.text)
            self.out.flush()

    def report(self) -> dict:
        """The stop reason with its numbers (``--json`` prints this object)."""
        fin = self.finished
        reason = self.watch.reason(fin)
        tokens = (fin.usage.completion_tokens if not fin.cancelled else None) or self.pieces
        out = {"stop_reason": reason.value, "sentence": reason.sentence(fin.max_tokens), "tokens": tokens,
               "max_tokens": fin.max_tokens, "tokens_per_second": fin.tokens_per_second}
        if self.watch.repeating:
            out["repetition"] = self.watch.repeating.describe()
        return out

    def print_report(self) -> None:
        r = self.report()
        if self.as_json:
            print(json.dumps(r), file=self.err)
            return
        numbers = [] if r["stop_reason"] == StopReason.REPLY_LIMIT.value else [f"{r['tokens']:,} tokens"]
        if r["tokens_per_second"]:
            numbers.append(f"{r['tokens_per_second']:.1f} tokens/s")
        text = r["sentence"]
        if numbers:  # "limit (1,024 tokens)" takes the speed inside its own brackets
            text = text[:-1] + f"; {', '.join(numbers)})" if text.endswith(")") else f"{text} ({', '.join(numbers)})"
        rep = self.watch.repeating  # the span rule's text is normalized tokens: not for reading
        print(f"ember: {text}" + (f": {r['repetition']}" if rep and rep.rule != "span" else ""), file=self.err)
