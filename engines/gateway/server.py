"""Running the gateway under Uvicorn: in the foreground (``ember serve``) or on a thread (the desktop).

The socket is bound here, before Uvicorn starts, so a port already taken is a
structured :class:`PortInUse` with its fix, not a log line and ``sys.exit``
from inside Uvicorn.
"""
from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from engines.gateway import keys
from engines.gateway.app import GatewayApp
from engines.gateway.config import GatewayConfig
from engines.gateway.routing import Router
from engines.running.manager import EngineManager

log = logging.getLogger(__name__)


@dataclass
class PortInUse(OSError):
    """The gateway's port is taken (another Ember, or another program)."""

    port: int
    host: str

    def __str__(self) -> str:
        return (f"Port {self.port} on {self.host} is already in use, so Ember's local API cannot listen there. "
                f"Another Ember may be running (its tray menu has Copy API URL), or another program uses it: "
                f"choose another port in Settings → Local API, or run `ember serve --port N` "
                f"(`--port 0` takes any free port).")


class Gateway:
    """One gateway over one engine manager. ``start()`` on a thread, or ``run()`` in the foreground."""

    def __init__(self, manager: EngineManager, config: GatewayConfig, router: Router | None = None):
        self.manager, self.config = manager, config
        self.router = router or Router(manager, pinned=config.pinned)
        self.app = GatewayApp(self.router, keys.get, config)
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1] if self._socket else self.config.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def bind(self) -> None:
        """Take the port now (raises :class:`PortInUse`)."""
        if self._socket is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(self.config.port, self.config.host) from None
            raise
        sock.listen(128)
        keys.get()  # made now, not at the first request: Settings and the tray show it from the start
        sock.set_inheritable(False)  # engines started later must not hold the gateway's port
        self._socket = sock

    def _make_server(self) -> uvicorn.Server:
        config = uvicorn.Config(self.app.build(), log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=3, ws="none")
        self._server = uvicorn.Server(config)
        return self._server

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (Uvicorn's own handlers, in the main thread)."""
        self.bind()
        self._make_server().run(sockets=[self._socket])
        self._close_socket()

    def start(self, timeout: float = 10.0, wait: bool = True) -> None:
        """Serve on a daemon thread; with ``wait``, return once requests are answered (else call
        :meth:`wait_started` later: ``ember serve MODEL`` starts its engine meanwhile)."""
        self.bind()
        server = self._make_server()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self._socket]},
                                        name="ember-gateway", daemon=True)
        self._thread.start()
        if wait:
            self.wait_started(timeout)

    def wait_started(self, timeout: float = 10.0) -> None:
        server, deadline = self._server, time.monotonic() + timeout
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError("the local API did not start (see the log)")
        log.info("local API listening on %s", self.base_url)

    def begin_stop(self) -> None:
        """Stop taking connections now (the caller then stops the engines, which ends open streams)."""
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        self.begin_stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close_socket()

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
