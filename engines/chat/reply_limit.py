"""How long a reply may be: every Ember client asks the engine for at least 1 and at most the context.

llama.cpp reads ``max_tokens`` as a 32-bit number with -1 meaning "no limit":
``-1`` generated without end, and ``1e12`` wrapped round to a negative number
(issue 14). A limit below 1 is refused; one beyond the context (or, when the
context is unknown, beyond what a 32-bit engine can hold) is clamped to it,
since no reply can be longer than the context anyway. The chat window, ``ember
chat`` and the local API all go through :func:`clamp`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: The largest limit an engine that reads 32-bit numbers takes as it is.
INT32_MAX = 2 ** 31 - 1


@dataclass
class ReplyLimitError(ValueError):
    """A reply limit that cannot be used. Fields: the value as given, and the key it came in."""

    value: object
    key: str = "max_tokens"

    def __post_init__(self):
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.key} must be a whole number of tokens, 1 or more; got {self.value!r}"

    def __str__(self) -> str:
        return self.message


def clamp(value: object, context: int | None = None, key: str = "max_tokens") -> int:
    """``value`` as a reply limit: refused below 1 (or not a whole number), at most ``context`` tokens
    (when known and positive), at most :data:`INT32_MAX` always."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ReplyLimitError(value, key)
    ceiling = min(context, INT32_MAX) if isinstance(context, int) and context > 0 else INT32_MAX
    if value > ceiling:
        log.info("%s %d is more than the %d tokens a reply can have here; using %d", key, value, ceiling, ceiling)
        return ceiling
    return value
