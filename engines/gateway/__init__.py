"""One local OpenAI-compatible address for every tool: Ember's gateway.

Editors, agents and scripts are configured once with a base URL and a key.
The gateway listens on a fixed port, checks the key, the Host header and the
browser origin, and routes each request by its ``model`` to the engine that
serves it, starting that engine on demand through the same
:class:`~engines.running.manager.EngineManager` the desktop uses (so a model an
outside tool loaded shows as running in the tray). Errors come back in
OpenAI's shape with Ember's diagnosis attached.

- :mod:`.keys`: the persistent key, private to the user.
- :mod:`.routing`: which names are served and how a name becomes a running engine.
- :mod:`.errors`: OpenAI-shaped errors, written from structured failures.
- :mod:`.app`: the Starlette application (middleware, routes, the streaming proxy).
- :mod:`.server`: running it under Uvicorn, in the foreground or on a thread.
"""
