"""Streaming chat against any OpenAI-compatible server (every Ember engine is one).

:class:`ChatStream` yields :class:`Delta` items as tokens arrive and ends with
one :class:`Finished`. It can be cancelled from another thread (the desktop's
Stop button). Failures carry structure for diagnosis: :class:`EngineHTTPError`
for an error answer (also when it arrives as an event inside the stream) and
:class:`StreamBroken` when the connection drops.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import httpx

from engines.chat import reply_limit

if TYPE_CHECKING:  # only for the annotation: completion_mode imports this module
    from engines.chat.completion_mode import CompletionRequest

log = logging.getLogger(__name__)


@dataclass
class Delta:
    text: str
    reasoning: bool = False


@dataclass
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class Finished:
    finish_reason: str | None
    usage: Usage = field(default_factory=Usage)
    tokens_per_second: float | None = None
    max_tokens: int | None = None
    cancelled: bool = False
    model: str | None = None


class ClientError(RuntimeError):
    pass


class EngineHTTPError(ClientError):
    """The engine answered with an error (HTTP status, or an error event mid-stream)."""

    def __init__(self, status: int, body: dict, raw: str = "", mid_stream: bool = False, turns: int | None = None):
        self.status, self.body, self.raw, self.mid_stream = status, body, raw, mid_stream
        self.turns = turns  # the user and assistant messages the request carried (None: unknown)
        err = body.get("error", body) if isinstance(body, dict) else {}
        self.type = err.get("type") if isinstance(err, dict) else None
        self.error_message = (err.get("message") if isinstance(err, dict) else None) or raw or f"HTTP {status}"
        super().__init__(f"HTTP {status}: {self.error_message}")

    @property
    def fields(self) -> dict:
        err = self.body.get("error", self.body) if isinstance(self.body, dict) else {}
        return err if isinstance(err, dict) else {}


class EngineStalled(ClientError):
    """The engine went silent mid-reply: no token and no log line for ``seconds`` (``paused``: its
    process is stopped, as by SIGSTOP). Ember stopped it; see :mod:`engines.running.stall`."""

    def __init__(self, seconds: float, paused: bool, timeout: float, received_text: str = ""):
        self.seconds, self.paused, self.timeout, self.received_text = seconds, paused, timeout, received_text
        super().__init__(f"no token and no log line for {seconds:.0f} s" + (" (its process is paused)" if paused
                                                                            else ""))


class StreamBroken(ClientError):
    """The connection failed or dropped before the answer was complete."""

    def __init__(self, reason: str, received_text: str = "", connect: bool = False):
        self.reason, self.received_text, self.connect = reason, received_text, connect
        super().__init__(reason)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _parse_error(response: httpx.Response, text: str) -> EngineHTTPError:
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        body = {}
    return EngineHTTPError(response.status_code, body if isinstance(body, dict) else {}, text)


class ChatStream:
    """One streamed chat completion. Iterate it; call :meth:`cancel` from any thread."""

    def __init__(self, base_url: str, messages: list[dict], api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0, client: httpx.Client | None = None,
                 completion: "CompletionRequest | None" = None, context: int | None = None, **options):
        """``completion``: a text-completion model (no chat template): the conversation goes to
        ``/completions`` as one text to continue, never through another model family's template.
        ``context``: the tokens one request may use, when known; ``max_tokens`` is clamped to it, and one
        below 1 raises :class:`~engines.chat.reply_limit.ReplyLimitError` (it would never end)."""
        if options.get("max_tokens") is not None:
            options["max_tokens"] = reply_limit.clamp(options["max_tokens"], context)
        self.base_url, self.messages, self.api_key, self.model = base_url.rstrip("/"), messages, api_key, model
        self.options, self.timeout, self.completion = options, timeout, completion
        self._client = client
        self._cancel = threading.Event()
        self._response: httpx.Response | None = None
        self._broken_off: ClientError | None = None
        self.text = ""
        self.last_activity = time.monotonic()  # the last time anything came from the engine

    def cancel(self) -> None:
        self._cancel.set()
        resp = self._response
        if resp is not None:
            try:
                resp.close()  # unblocks a read waiting for the next chunk
            except Exception:
                pass

    def break_off(self, error: ClientError) -> None:
        """End the stream from outside with ``error`` (a watchdog saw the engine stall): the reader
        gets it raised instead of a cancelled ending."""
        self._broken_off = error
        self.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def turns(self) -> int:
        """The user and assistant messages this request sends: more than one means the history is counted."""
        return sum(1 for m in self.messages if m.get("role") in ("user", "assistant"))

    @property
    def path(self) -> str:
        return "/completions" if self.completion is not None else "/chat/completions"

    def body(self) -> dict:
        if self.completion is not None:
            return self.completion.body(self.model, **self.options)
        body = {"messages": self.messages, "stream": True, "stream_options": {"include_usage": True}}
        if self.model:
            body["model"] = self.model
        body.update({k: v for k, v in self.options.items() if v is not None})
        return body

    def __iter__(self) -> Iterator[Delta | Finished]:
        own = self._client is None
        client = self._client or httpx.Client(timeout=httpx.Timeout(self.timeout, connect=10.0))
        started = time.monotonic()
        first_token_at = None
        n_chunks = 0
        finish_reason = None
        usage = Usage()
        model = None
        try:
            try:
                with client.stream("POST", self.base_url + self.path, json=self.body(),
                                   headers=_headers(self.api_key)) as resp:
                    self._response = resp
                    if resp.status_code >= 400:
                        raise _parse_error(resp, resp.read().decode("utf-8", errors="replace"))
                    for line in resp.iter_lines():
                        self.last_activity = time.monotonic()
                        if self._cancel.is_set():
                            break
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        try:
                            event = json.loads(data)
                        except json.JSONDecodeError:
                            continue
                        if "error" in event:
                            err = event["error"] if isinstance(event["error"], dict) else {"message": str(event["error"])}
                            raise EngineHTTPError(int(err.get("code") or 500), {"error": err}, data, mid_stream=True)
                        model = event.get("model", model)
                        if event.get("usage"):
                            u = event["usage"]
                            usage = Usage(u.get("prompt_tokens"), u.get("completion_tokens"))
                        for choice in event.get("choices") or []:
                            delta = choice.get("delta") or {}
                            if "text" in choice:  # a /completions chunk
                                delta = {"content": choice.get("text")}
                            for key, reasoning in (("reasoning_content", True), ("content", False)):
                                piece = delta.get(key)
                                if piece:
                                    if first_token_at is None:
                                        first_token_at = time.monotonic()
                                    n_chunks += 1
                                    if not reasoning:
                                        self.text += piece
                                    yield Delta(piece, reasoning)
                            if choice.get("finish_reason"):
                                finish_reason = choice["finish_reason"]
                    else:
                        if finish_reason is None and not self._cancel.is_set():
                            raise StreamBroken("the engine closed the stream before the answer was complete",
                                               self.text)
            except EngineHTTPError as exc:
                exc.turns = self.turns  # whether the prompt counted the history ("this conversation needs")
                raise
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise StreamBroken(f"cannot connect to {self.base_url}: {exc}", connect=True) from exc
            except (httpx.TransportError, httpx.StreamError) as exc:
                if self._cancel.is_set():
                    pass
                else:
                    raise StreamBroken(f"the connection to the engine broke: {exc}", self.text) from exc
        finally:
            self._response = None
            if own:
                client.close()
        if self._broken_off is not None:
            self._broken_off.received_text = self.text
            raise self._broken_off
        tps = None
        n_out = usage.completion_tokens or n_chunks
        if first_token_at is not None and n_out > 1:
            elapsed = time.monotonic() - first_token_at
            tps = (n_out - 1) / elapsed if elapsed > 0 else None
        yield Finished(finish_reason if not self._cancel.is_set() else "cancelled", usage, tps,
                       self.options.get("max_tokens"), self._cancel.is_set(), model)


def stream_chat(base_url: str, messages: list[dict], api_key: str | None = None, **options) -> ChatStream:
    return ChatStream(base_url, messages, api_key, **options)


def list_models(base_url: str, api_key: str | None = None, timeout: float = 5.0) -> list[dict]:
    """The server's ``/models``; a server that cannot be reached raises :class:`StreamBroken` (``connect``),
    an error answer :class:`EngineHTTPError`, so both reach the diagnosis."""
    url = base_url.rstrip("/") + "/models"
    try:
        r = httpx.get(url, headers=_headers(api_key), timeout=timeout)
    except httpx.HTTPError as exc:
        raise StreamBroken(f"cannot connect to {base_url}: {type(exc).__name__}: {exc}", connect=True) from exc
    if r.status_code >= 400:
        raise _parse_error(r, r.text)
    try:
        data = r.json().get("data", [])
    except (ValueError, AttributeError):
        raise EngineHTTPError(r.status_code, {}, f"{url} did not answer with an OpenAI model list") from None
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
