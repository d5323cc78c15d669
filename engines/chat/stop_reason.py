"""Why a reply ended, and the one sentence people read for it.

The chat window's status line and ``ember chat`` both name the reason a reply
stopped (issue 11: a looping reply that ended at the token cap used to say
"Done"). The reason is decided here from the stream's structured ending
(:class:`~engines.chat.client.Finished`, or the error that ended it), and the
sentence for each reason is written once, in :data:`SENTENCES`.
"""
from __future__ import annotations

import enum
import logging

from engines.chat.client import EngineHTTPError, Finished

log = logging.getLogger(__name__)

#: A "length" ending at or above this share of max_tokens is the reply limit, not a full
#: context (engines count the last token differently; the same rule as the diagnosis).
LIMIT_SHARE = 0.9

#: llama.cpp's error types and messages for a conversation that no longer fits the context.
_CONTEXT_TYPES = ("exceed_context_size_error",)
_CONTEXT_MESSAGES = ("context size has been exceeded", "exceeds the available context size")


class StopReason(str, enum.Enum):
    """How a reply ended; the value is what ``--json`` output and logs carry."""

    FINISHED = "finished"
    REPLY_LIMIT = "reply_limit"
    REPEATING = "repeating"
    STOPPED_BY_YOU = "stopped_by_you"
    CONTEXT_FULL = "context_full"
    ENGINE_FAILED = "engine_failed"
    EMPTY = "empty"

    def sentence(self, max_tokens: int | None = None) -> str:
        """The status line text, e.g. "Stopped: the model was repeating itself"."""
        text = SENTENCES[self]
        if self is StopReason.REPLY_LIMIT and max_tokens:
            text += f" ({max_tokens:,} tokens)"
        return text


SENTENCES: dict[StopReason, str] = {
    StopReason.FINISHED: "Finished: the model ended its reply",
    StopReason.REPLY_LIMIT: "Stopped: the reply reached its length limit",
    StopReason.REPEATING: "Stopped: the model was repeating itself",
    StopReason.STOPPED_BY_YOU: "Stopped by you",
    StopReason.CONTEXT_FULL: "Stopped: the conversation filled the model's context",
    StopReason.ENGINE_FAILED: "Failed: the engine stopped answering",
    StopReason.EMPTY: "Ended: the model wrote nothing but blank space; ask again or reword your message",
}


def from_finished(finished: Finished, repeating: bool = False, blank: bool = False) -> StopReason:
    """The reason for a stream that ended with ``finished``.

    ``repeating``: the caller cancelled the stream because the repetition guard
    tripped (the stream itself only knows it was cancelled). ``blank``: the reply
    showed nothing but whitespace (a small sampled model does this now and then;
    an empty bubble with "Finished" would look like a broken app).
    """
    if repeating:
        return StopReason.REPEATING
    if finished.cancelled or finished.finish_reason == "cancelled":
        return StopReason.STOPPED_BY_YOU
    if blank:
        return StopReason.EMPTY
    if finished.finish_reason != "length":
        return StopReason.FINISHED
    out, limit = finished.usage.completion_tokens, finished.max_tokens
    if limit and (out is None or out >= limit * LIMIT_SHARE):
        return StopReason.REPLY_LIMIT
    return StopReason.CONTEXT_FULL  # "length" before the limit: the slot's context ran out


def from_error(exc: BaseException) -> StopReason:
    """The reason for a stream that ended with an exception (the diagnosis explains it further)."""
    if isinstance(exc, EngineHTTPError):
        message = (exc.error_message or "").lower()
        if exc.type in _CONTEXT_TYPES or any(m in message for m in _CONTEXT_MESSAGES):
            return StopReason.CONTEXT_FULL
    return StopReason.ENGINE_FAILED
