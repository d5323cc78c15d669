"""Every gateway error in OpenAI's shape, with Ember's diagnosis attached.

Clients (the openai SDK, litellm, editors) read ``error.message`` and
``error.code``; people read the message, so it is the diagnosis's title, its
explanation and the fixes, in Ember's terms. The structure rides along under
``error.ember`` (kind, facts, fixes) for tools that want it. Deterministic
failures carry ``x-should-retry: false`` so the openai SDK does not start a
failing engine three times.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from engines.diagnosis.types import Diagnosis

log = logging.getLogger(__name__)

NO_RETRY = {"x-should-retry": "false"}


@dataclass
class GatewayError(Exception):
    """One error answer: HTTP status, OpenAI ``type`` and ``code``, the text, and the diagnosis if any."""

    status: int
    message: str
    code: str
    type: str = "invalid_request_error"
    param: str | None = None
    diagnosis: Diagnosis | None = None
    extra: dict = field(default_factory=dict)
    retry: bool = False

    def body(self) -> dict:
        err = {"message": self.message, "type": self.type, "param": self.param, "code": self.code, **self.extra}
        if self.diagnosis is not None:
            d = self.diagnosis.to_dict()
            d.pop("log_tail", None)  # the log stays on this computer's disk (log_path says where)
            err["ember"] = d
        return {"error": err}

    def headers(self) -> dict[str, str]:
        return {} if self.retry else dict(NO_RETRY)


def message_of(d: Diagnosis) -> str:
    """A diagnosis as one paragraph: what happened, why, and what to change."""
    text = f"{d.title}. {d.explanation}".replace("\n", " ")
    if d.fixes:
        fixes = "; ".join(f.label + (f" ({f.cli_hint})" if f.changes else "") for f in d.fixes)
        text += f" What you can do: {fixes}."
    return " ".join(text.split())


def from_diagnosis(d: Diagnosis, status: int, error_type: str = "invalid_request_error",
                   retry: bool = False) -> GatewayError:
    return GatewayError(status, message_of(d), str(d.kind), error_type, diagnosis=d, retry=retry)


def unauthorized(why: str) -> GatewayError:
    return GatewayError(401, f"{why}. Send the key Ember shows (tray menu → Copy API key, or `ember serve`'s "
                             "output) as 'Authorization: Bearer KEY'.", "invalid_api_key",
                        "authentication_error")


def not_served(exc) -> GatewayError:
    """404 for :class:`~engines.gateway.routing.ModelNotServed`, listing the served names."""
    code = "model_not_downloaded" if exc.not_downloaded else "model_not_found"
    return GatewayError(404, str(exc), code, param="model", extra={"served": list(exc.served)})


def does_not_fit(exc) -> GatewayError:
    """503 for :class:`~engines.running.manager.DoesNotFit`, with its numbers."""
    return GatewayError(503, f"{exc}. Choose a smaller model or quantization, or free memory.",
                        "model_too_large", "server_error",
                        extra={"needed_bytes": exc.needed_bytes, "free_bytes": exc.free_bytes})


def bad_request(message: str, code: str = "invalid_request", param: str | None = None) -> GatewayError:
    return GatewayError(400, message, code, param=param)
