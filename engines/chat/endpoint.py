"""Something the chat can talk to: a local engine Ember started, or a remote server.

Its own module because both sides make them: the engine manager for the
engines it runs, :mod:`engines.chat.remotes` for the servers the user added.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Endpoint:
    """An OpenAI-compatible base URL with its key, and what the chat shows and sends for it."""

    name: str
    base_url: str
    api_key: str | None
    kind: str = "local"          # local | unloaded | remote
    model_id: str | None = None  # the model name to send, for servers with several models
    engine: str | None = None
