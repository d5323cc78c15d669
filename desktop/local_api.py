"""The local API while the desktop app is open: the core's gateway over the app's own engine manager.

Because it is the same manager, a model an outside tool starts through the API
shows in the tray and the chat window as running, and the chat window's models
answer outside tools. Started after the tray icon shows (its imports are not paid
for before), off the GUI thread; restarted when Settings change how it listens.
"""
from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal

from engines import settings
from engines.gateway.config import GatewayConfig
from engines.running.manager import EngineManager

from .bridge import run_async

log = logging.getLogger(__name__)


class LocalApi(QObject):
    """Owns the gateway; ``changed`` after each start or stop (``url`` and ``error`` say how it went)."""

    changed = Signal()

    def __init__(self, manager: EngineManager, parent: QObject | None = None):
        super().__init__(parent)
        self.manager = manager
        self.gateway = None
        self.config: GatewayConfig | None = None
        self.error: str | None = None   # why it is not listening (port taken...), in words

    @property
    def url(self) -> str | None:
        return self.gateway.base_url if self.gateway is not None else None

    def apply(self, values: dict | None = None) -> None:
        """Start, stop or restart to match the settings; a no-op when nothing that matters changed."""
        values = values if values is not None else settings.load()
        config = GatewayConfig.from_settings(values) if values.get("gateway_enabled", True) else None
        if config == self.config and (self.gateway is not None or self.error is not None or config is None):
            return
        self.config = config
        old, self.gateway = self.gateway, None
        run_async(lambda: self._restart(old, config), self._started, self._failed, name="local-api", owner=self)

    def _restart(self, old, config: GatewayConfig | None):
        if old is not None:
            old.stop()
        if config is None:
            return None
        from engines.gateway.server import Gateway  # uvicorn and starlette: after the tray is up
        gateway = Gateway(self.manager, config)
        gateway.start()
        return gateway

    def _started(self, gateway) -> None:
        self.gateway, self.error = gateway, None
        if gateway is not None:
            log.info("local API at %s", gateway.base_url)
        self.changed.emit()

    def _failed(self, exc: BaseException) -> None:
        self.gateway, self.error = None, str(exc)
        log.warning("local API not started: %s", exc)
        self.changed.emit()

    def stop(self) -> None:
        """At quit: close the port (engines are stopped by the app)."""
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
