"""The gateway's HTTP face: Starlette routes, the safety middleware, the streaming proxy.

Safety by default (issue 13): every ``/v1`` route wants the key; the Host header
must name this computer (Starlette's TrustedHostMiddleware: a DNS-rebinding page
gets 400); cross-origin browser access only for the origins the user listed
(Starlette's CORSMiddleware, absent when the list is empty, so a foreign
preflight gets no ``access-control-allow-origin``).

The proxy streams the engine's bytes as they come (httpx ``aiter_raw``), so a
reply through the gateway is as fast as from the engine itself; an error answer
is read whole and rewritten as Ember's diagnosis (:mod:`.errors`).
"""
from __future__ import annotations

import contextlib
import hmac
import json
import logging
from typing import Callable

import anyio
import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engines.chat import reply_limit
from engines.chat.client import EngineHTTPError, StreamBroken
from engines.diagnosis import diagnose
from engines.gateway import errors
from engines.gateway.config import LOOPBACK_NAMES, GatewayConfig
from engines.gateway.errors import GatewayError
from engines.gateway.routing import ModelNotServed, Router, Target
from engines.models import store
from engines.running import backends, launch, params, supervisor
from engines.running.manager import DoesNotFit

log = logging.getLogger(__name__)

#: The OpenAI (and Anthropic-style) routes passed through to the engine, streaming or not.
PROXIED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages", "/v1/responses")
#: Request headers an engine may need besides the body (Anthropic-style clients send these).
PASSED_HEADERS = ("anthropic-version", "anthropic-beta", "accept")
#: Request fields that limit a reply's length (OpenAI chat and completions, Anthropic, Responses).
REPLY_LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _no_constant(name: str):
    """NaN and Infinity are not JSON (Python's parser takes them; engines then fail on them)."""
    raise ValueError(f"{name} is not a number JSON allows")


def _json_error(err: GatewayError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def _reply_limits(body: dict, context: int | None) -> dict:
    """``body`` with its reply limits (``max_tokens`` and kin) clamped to ``context``; a 400 for one below 1,
    which llama.cpp reads as "no limit" (issue 14)."""
    out = dict(body)
    for key in REPLY_LIMIT_KEYS:
        if out.get(key) is not None:
            try:
                out[key] = reply_limit.clamp(out[key], context, key)
            except reply_limit.ReplyLimitError as exc:
                raise errors.bad_request(exc.message + ".", "invalid_max_tokens", param=key) from None
    return out


class GatewayApp:
    """The routes, bound to a router (names → engines) and the key (read each time: Settings may
    regenerate it while the gateway runs)."""

    def __init__(self, router: Router, key: Callable[[], str], config: GatewayConfig):
        self.router, self.key, self.config = router, key, config
        self.http: httpx.AsyncClient | None = None

    # -- the Starlette application ------------------------------------------------------------
    def build(self) -> Starlette:
        middleware = []
        if not self.config.lan:
            hosts = [*LOOPBACK_NAMES, *self.config.extra_hosts]
            middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
        if self.config.origins:
            middleware.append(Middleware(CORSMiddleware, allow_origins=list(self.config.origins),
                                         allow_methods=["GET", "POST", "OPTIONS"],
                                         allow_headers=["authorization", "content-type", "x-api-key",
                                                        "anthropic-version", "openai-organization"]))
        routes = [Route("/health", self.health, methods=["GET"]),
                  Route("/v1/models", self.models, methods=["GET"]),
                  Route("/v1/models/{name:path}", self.model, methods=["GET"]),
                  *[Route(p, self.proxy, methods=["POST"]) for p in PROXIED]]
        return Starlette(routes=routes, middleware=middleware, lifespan=self.lifespan,
                         exception_handlers={GatewayError: self._on_error})

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        # connect quickly; never time out a read (a long prompt is read in silence for minutes)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                                      limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        async with anyio.create_task_group() as tg:
            if self.config.idle_timeout is not None:
                tg.start_soon(self._unload_idle_loop)
            yield
            tg.cancel_scope.cancel()
        await self.http.aclose()

    async def _unload_idle_loop(self) -> None:
        period = max(0.5, min(30.0, self.config.idle_timeout / 4))
        manager = self.router.manager
        while True:
            await anyio.sleep(period)
            if manager.idle_timeout is not None and manager.running():
                await anyio.to_thread.run_sync(manager.unload_idle)

    async def _on_error(self, request: Request, exc: GatewayError) -> Response:
        return _json_error(exc)

    # -- routes -------------------------------------------------------------------------------
    def _check_key(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        sent = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not sent:
            raise errors.unauthorized("No API key was sent")
        if not hmac.compare_digest(sent.encode(), self.key().encode()):
            raise errors.unauthorized("The API key is wrong")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        self._check_key(request)
        return JSONResponse({"object": "list", "data": await anyio.to_thread.run_sync(self._model_rows)})

    async def model(self, request: Request) -> Response:
        self._check_key(request)
        name = request.path_params["name"]
        rows = {r["id"]: r for r in await anyio.to_thread.run_sync(self._model_rows)}
        if name not in rows:
            raise errors.not_served(ModelNotServed(name, list(rows)))
        return JSONResponse(rows[name])

    def _model_rows(self) -> list[dict]:
        running = {r.plan.model.name for r in self.router.manager.running()}
        local = self.router.local_names()
        rows = [{"id": n, "object": "model", "created": 0, "owned_by": "ember",
                 "ember": {"where": "local", "running": n in running}} for n in local]
        rows += [{"id": n, "object": "model", "created": 0, "owned_by": "remote",
                  "ember": {"where": "remote", "base_url": t.base_url}}
                 for n, t in self.router.remote_targets().items()]
        rows += [{"id": n, "object": "model", "created": 0, "owned_by": "cluster",
                  "ember": {"where": "cluster", "base_url": t.base_url}}
                 for n, t in self.router.cluster_targets().items() if n not in self.router.remote_targets()]
        return rows

    async def proxy(self, request: Request) -> Response:
        self._check_key(request)
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}", parse_constant=_no_constant)
        except ValueError as exc:
            raise errors.bad_request(f"The request body is not JSON ({exc}).", "invalid_json") from None
        if not isinstance(body, dict):
            raise errors.bad_request("The request body must be a JSON object.", "invalid_json")
        requested = body.get("model")
        if requested is not None and not isinstance(requested, str):
            raise errors.bad_request("'model' must be a string naming a model.", param="model")
        _reply_limits(body, None)  # refused before any engine starts
        target = await anyio.to_thread.run_sync(self._target, requested)
        body = _reply_limits(body, self._context(target))
        return await self._forward(request, target, dict(body, model=target.upstream_model))

    def _context(self, target: Target) -> int | None:
        """The tokens one request may use on a local engine (a reply limit beyond it is clamped)."""
        run = self.router.manager.get(target.name) if target.local else None
        if run is None:
            return None
        shape = backends.get(run.plan.engine).context(run.plan)
        return shape.per_slot or shape.total

    def _target(self, requested: str | None) -> Target:
        """Choose and, when needed, start the engine (blocking: a worker thread)."""
        try:
            return self.router.target(self.router.choose(requested))
        except ModelNotServed as exc:
            raise errors.not_served(exc) from None
        except DoesNotFit as exc:
            raise errors.does_not_fit(exc) from None
        except supervisor.EngineStartError as exc:
            d = diagnose.diagnose_exception(exc, plan=self._plan_of(requested))
            raise (errors.from_diagnosis(d, 502, "server_error") if d else
                   GatewayError(502, str(exc), "engine_failed", "server_error")) from None
        except (launch.PlanError, params.ParamError, store.ModelError) as exc:
            d = diagnose.diagnose_exception(exc)
            raise (errors.from_diagnosis(d, 400) if d else errors.bad_request(str(exc))) from None

    def _plan_of(self, name: str | None) -> launch.LaunchPlan | None:
        return self.router.manager.unloaded().get(name or "") if name else None

    async def _forward(self, request: Request, target: Target, body: dict) -> Response:
        headers = {"content-type": "application/json"}
        headers.update({h: request.headers[h] for h in PASSED_HEADERS if h in request.headers})
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        url = target.base_url.rstrip("/") + request.url.path[len("/v1"):]
        manager = self.router.manager
        using = manager.using(target.name) if target.local else contextlib.nullcontext()
        using.__enter__()
        run = manager.get(target.name) if target.local else None
        offset = run.proc.log_size() if run is not None else 0
        try:
            upstream = await self.http.send(self.http.build_request("POST", url, content=json.dumps(body),
                                                                    headers=headers), stream=True)
        except httpx.HTTPError as exc:
            using.__exit__(None, None, None)
            broken = StreamBroken(f"could not reach the engine: {exc}", connect=isinstance(exc, httpx.ConnectError))
            d = await anyio.to_thread.run_sync(lambda: diagnose.diagnose_exception(
                broken, proc=run.proc if run else None, plan=run.plan if run else None, log_offset=offset))
            raise (errors.from_diagnosis(d, 502, "server_error") if d else
                   GatewayError(502, str(broken), "engine_unreachable", "server_error")) from None
        if upstream.status_code >= 400:
            content = await upstream.aread()
            await upstream.aclose()
            using.__exit__(None, None, None)
            raise await self._upstream_error(upstream.status_code, content, run, offset)

        done = False

        async def close() -> None:
            nonlocal done
            if not done:
                done = True
                with anyio.CancelScope(shield=True):  # a client that went away cancels us: close anyway
                    await upstream.aclose()  # the engine sees the connection go and stops generating
                using.__exit__(None, None, None)

        async def relay():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await close()

        kept = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "cache-control")}
        return StreamingResponse(relay(), status_code=upstream.status_code, headers=kept,
                                 background=BackgroundTask(close))

    async def _upstream_error(self, status: int, content: bytes, run, offset: int) -> GatewayError:
        """The engine's error answer, diagnosed: e.g. an over-long prompt becomes 400
        ``context_exceeded`` with the context that would fit."""
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = {"error": {"message": content.decode(errors="replace")[:2000]}}
        exc = EngineHTTPError(status, parsed if isinstance(parsed, dict) else {}, content.decode(errors="replace"))
        d = await anyio.to_thread.run_sync(lambda: diagnose.diagnose_exception(
            exc, proc=run.proc if run else None, plan=run.plan if run else None, log_offset=offset))
        if d is None:
            return GatewayError(status, exc.error_message, exc.type or "engine_error",
                                "server_error" if status >= 500 else "invalid_request_error", retry=status >= 500)
        return errors.from_diagnosis(d, status, "server_error" if status >= 500 else "invalid_request_error",
                                     retry=status >= 500 and d.kind == "server_error")
