"""What a first chat can offer: is an instruction-following model on disk, and can one be downloaded now?

The starter (the only model Ember brings) is a base model: it continues text, it
does not follow instructions. Until a chat model is downloaded, the chat window
opens on a welcome card that leads to one; when the Hub cannot be reached, the
card says so plainly instead of offering a download that would fail.

Nothing here imports Qt: the desktop calls :func:`check` off the GUI thread (it
reads GGUF headers and may wait up to :data:`PROBE_TIMEOUT_S` on the network).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass


from engines.chat.completion_mode import has_chat_model
from engines.models import catalog, hub, store

log = logging.getLogger(__name__)

#: How long the Hub may take to answer before Ember calls it unreachable.
PROBE_TIMEOUT_S = 4.0


@dataclass(frozen=True)
class FirstRun:
    """``has_chat_model``: a downloaded model follows instructions. ``offline``: why no model can be
    downloaded now, as a sentence people read; None when the Hub answers."""

    has_chat_model: bool
    offline: str | None = None

    def to_dict(self) -> dict:
        return {"has_chat_model": self.has_chat_model, "offline": self.offline}


def downloaded_models() -> list[store.ModelSpec]:
    """Every model on this computer: the starter, the ones the user added, the finished catalog downloads."""
    return store.local_models(assemble_starter=False) + [s for s in catalog.catalog_specs() if s.is_local]


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub cannot be reached (offline by setting, or no answer), or None when it answers."""
    reach = hub.reachable(timeout)
    return None if reach.online else reach.reason


def check(probe_hub: bool = True) -> FirstRun:
    """Whether a chat model is on disk and, when none is, whether one can be downloaded now."""
    has = has_chat_model(downloaded_models())
    return FirstRun(has, None if has or not probe_hub else hub_unreachable())
