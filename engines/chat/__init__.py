"""Talking to a running model: the streaming client, conversation history, remote endpoints.

``endpoint`` (what the chat talks to) imports nothing; ``remotes`` makes
endpoints of the servers the user added, and ``engines.running.manager`` of
the engines Ember runs, so the two never import each other. What people read
of a reply goes through ``guard.ReplyWatch`` (``special_tokens``, the loop
rules, ``stop_reason``); ``terminal`` prints one to a terminal for the CLI.
"""
