"""Reply texts for the guard and filter tests (tests/fixtures/replies; its README says how each was made)."""
from __future__ import annotations

import json

from tests.helpers import ROOT

REPLIES = ROOT / "tests" / "fixtures" / "replies"

#: Real streams of the starter model through llama.cpp, delta by delta, by name.
STARTER_REPLIES: dict[str, dict] = json.loads((REPLIES / "starter_replies.json").read_text(encoding="utf-8"))["replies"]


def _texts(folder: str) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((REPLIES / folder).iterdir()) if p.is_file()}


#: Normal answers the guard must let through: lists, code with repeated lines, tables, a song's chorus...
NORMAL = _texts("normal")
#: Loops the guard must stop.
LOOPS = _texts("loops")
