"""How the gateway listens and whom it lets in, from the settings (the Settings dialog writes them)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from engines import settings

#: Host header names that mean "this computer" (the DNS-rebinding guard accepts only these
#: unless the user opted into the local network).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
#: Overrides the port setting (a second Ember for development; the test suite uses 0: any free port).
PORT_ENV = "EMBER_GATEWAY_PORT"


@dataclass(frozen=True)
class GatewayConfig:
    port: int = int(settings.DEFAULTS["gateway_port"])
    lan: bool = False                   # listen on every interface (the user was warned)
    origins: tuple[str, ...] = ()       # browser origins allowed cross-origin access
    pinned: str | None = None           # serve one model only (``ember serve MODEL``)
    max_loaded: int | None = None
    idle_timeout: float | None = None   # seconds; None: never unload
    extra_hosts: tuple[str, ...] = field(default=())  # more Host names to accept (LAN: this machine's names)

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.lan else "127.0.0.1"

    @classmethod
    def from_settings(cls, values: dict | None = None, **overrides) -> "GatewayConfig":
        v = values if values is not None else settings.load()
        origins = v.get("gateway_origins") or []
        max_loaded = v.get("max_loaded_models")
        port = os.environ.get(PORT_ENV) or v.get("gateway_port") or settings.DEFAULTS["gateway_port"]
        made = dict(port=int(port),
                    lan=bool(v.get("gateway_lan")),
                    origins=tuple(str(o).rstrip("/") for o in origins if str(o).strip()),
                    max_loaded=int(max_loaded) if max_loaded else None,
                    idle_timeout=settings.idle_timeout_seconds(v))
        made.update(overrides)
        return cls(**made)
