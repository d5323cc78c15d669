"""A thin OpenAI-compatible server for one transformers model (the transformers engine).

Why our own: ``transformers serve`` (5.x) loads models on demand behind a
timeout and has no API key; Ember needs one model loaded before "ready", a
Bearer key and a readiness answer. The HTTP side is Starlette served by
Uvicorn; the model side is torch and transformers, imported when the model
loads. Besides those, this file needs only the standard library and
:mod:`engines.units` (itself standard library only), so it runs under any
interpreter the user picked for the transformers engine
(``engine_python.transformers``); the launcher puts Ember's folder on
``PYTHONPATH``. An interpreter without Starlette or Uvicorn gets one log line
that names them and the command that installs them, not a traceback.

Endpoints: ``GET /health`` (200 once the model is loaded; the port is not even
open before), ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (text to continue, for models without a chat
template), each streaming SSE or one JSON answer. The model id is the served
name (``--served-model-name``, what ``ember serve`` prints), never a path; a
request naming another model gets 404 listing the served one. The API key
comes from the environment (``EMBER_API_KEY``), never the command line. One
generation runs at a time (on its own thread; its pieces reach the event loop
through :class:`Pieces`); a client that goes away stops its generation.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from engines.units import DEFAULT_N_CTX

try:  # the HTTP stack: an engine interpreter without it is told how to install it (see main)
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:
    MISSING: ImportError | None = exc
else:
    MISSING = None

log = logging.getLogger("engines.running.hf_server")

PREFIX = "ember-hf:"


def say(text: str) -> None:
    print(f"{PREFIX} {text}", file=sys.stderr, flush=True)


def pick_device(requested: str = "auto") -> str:
    import torch
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, requested: str = "auto"):
    """bf16 on GPUs that have it, fp16 on other GPUs, fp32 on the CPU (bf16 matmuls are slow there)."""
    import torch
    if requested != "auto":
        return getattr(torch, requested)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def plain_prompt(messages: list[dict]) -> str:
    """For models without a chat template (base models): role-labelled lines."""
    lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def _text_content(content) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class Engine:
    def __init__(self, args):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.args = args
        self.device = pick_device(args.device)
        self.dtype = pick_dtype(self.device, args.dtype)
        say(f"loading {args.model} on {self.device} ({str(self.dtype).replace('torch.', '')})")
        started = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(args.model, dtype=self.dtype,
                                                          trust_remote_code=args.trust_remote_code)
        self.model.to(self.device)
        self.model.eval()
        torch.set_grad_enabled(False)
        cfg = self.model.config
        trained = getattr(getattr(cfg, "text_config", cfg), "max_position_embeddings", None) or DEFAULT_N_CTX
        self.max_model_len = args.max_model_len or min(trained, DEFAULT_N_CTX)
        self.model_id = args.served_model_name or os.path.basename(os.path.normpath(args.model))
        # One generation at a time; the same lock guards every tokenizer call, because a fast
        # tokenizer used from two threads at once fails ("Already borrowed").
        self.lock = threading.Lock()
        say(f"loaded in {time.monotonic() - started:.1f} s; context {self.max_model_len} tokens")

    def prompt_ids(self, messages: list[dict]):
        with self.lock:
            return self._prompt_ids(messages)

    def text_ids(self, prompt: str):
        """A completion's prompt as it is: no template, the tokenizer's own start token."""
        with self.lock:
            return self.tokenizer(prompt, return_tensors="pt").input_ids

    def _prompt_ids(self, messages: list[dict]):
        msgs = [{"role": m.get("role", "user"), "content": _text_content(m.get("content"))} for m in messages]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = self.tokenizer(plain_prompt(msgs), return_tensors="pt").input_ids
        return ids

    def generate(self, body: dict, ids, cancel: threading.Event, out: "Pieces"):
        """Run one generation, putting text pieces then ("done", usage, finish) or ("error", exc) on ``out``."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return cancel.is_set()

        n_prompt = int(ids.shape[-1])
        a = self.args
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or a.max_new_tokens
        max_tokens = max(1, min(int(max_tokens), self.max_model_len - n_prompt))
        temperature = body.get("temperature", a.temperature)
        temperature = a.temperature if temperature is None else float(temperature)
        kwargs = dict(max_new_tokens=max_tokens, do_sample=temperature > 0,
                      stopping_criteria=StoppingCriteriaList([Cancelled()]),
                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        if temperature > 0:
            kwargs["temperature"] = temperature
            kwargs["top_p"] = float(body.get("top_p") or a.top_p)
            top_k = body.get("top_k", a.top_k)
            kwargs["top_k"] = int(top_k) if top_k is not None else 0
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if body.get("seed") is not None:
            torch.manual_seed(int(body["seed"]))
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        result: dict = {}

        def run():
            try:
                with self.lock:
                    seq = self.model.generate(ids.to(self.device), attention_mask=torch.ones_like(ids).to(self.device),
                                              streamer=streamer, **kwargs)
                result["n"] = int(seq.shape[-1]) - n_prompt
            except BaseException as exc:  # reaches the client as an error event, and the log
                log.exception("generation failed")
                result["error"] = exc
                streamer.on_finalized_text("", stream_end=True)

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        text, stopped = "", False
        for piece in streamer:
            if not piece or stopped:
                continue
            text += piece
            hit = next((s for s in stops if s and s in text), None)
            if hit:
                piece = piece[: max(0, len(piece) - (len(text) - text.index(hit)))]
                stopped = True
                cancel.set()
            if piece:
                out.put(piece)
        worker.join()
        if "error" in result:
            out.put(("error", result["error"]))
            return
        n = result.get("n", 0)
        if cancel.is_set() and not stopped:
            say(f"generation cancelled after {n} of at most {max_tokens} tokens (the client left)")
        finish = "stop" if stopped or n < max_tokens else "length"
        out.put(("done", {"prompt_tokens": n_prompt, "completion_tokens": n,
                          "total_tokens": n_prompt + n}, finish))


#: What the server needs besides torch and transformers, as pip takes it (pyproject's ``transformers`` extra).
STACK = "'starlette>=0.40' 'uvicorn>=0.30'"


def missing_stack(exc: ImportError) -> str:
    """The log line for an interpreter without the HTTP stack (the diagnosis reads "No module named")."""
    return (f"No module named '{exc.name}': Ember's Transformers server needs starlette and uvicorn in this "
            f"Python ({sys.executable}); install them with: {sys.executable} -m pip install {STACK}")


class Pieces:
    """``Engine.generate``'s ``out``: what it puts on its thread (text pieces, then ("done", usage,
    finish) or ("error", exc)) arrives in order on the event loop that made this."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()

    def put(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is stopping
            pass

    async def get(self):
        return await self._queue.get()


def _generate(engine: Engine, body: dict, ids, cancel: threading.Event, out: Pieces) -> None:
    """The generation thread; whatever ``generate`` raises reaches the client as an error, never silence."""
    try:
        engine.generate(body, ids, cancel, out)
    except Exception as exc:
        log.exception("generation failed")
        out.put(("error", exc))


def _json(status: int, payload: dict) -> Response:
    return Response(json.dumps(payload), status, media_type="application/json")


def _error(status: int, message: str, type_: str, **fields) -> Response:
    return _json(status, {"error": {"message": message, "type": type_, "code": status, **fields}})


def _failed(exc: BaseException) -> dict:
    return {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": 500}}


class EventStream:
    """An answer as SSE. However the response ends (done, or the client left: Starlette stops
    the stream when the connection closes), the generation is told to stop."""

    def __init__(self, events, cancel: threading.Event) -> None:
        self.response = StreamingResponse(events, media_type="text/event-stream",
                                          headers={"Cache-Control": "no-cache"})
        self.cancel = cancel

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.cancel.set()


class Routes:
    """The HTTP side: routes, the API key, and the answer streamed as SSE or sent whole."""

    def __init__(self, engine: Engine, api_key: str | None) -> None:
        self.engine = engine
        self._expected = f"Bearer {api_key}".encode() if api_key else None

    def authorized(self, request: Request) -> bool:
        if self._expected is None:
            return True
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), self._expected)

    async def health(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def models(self, request: Request) -> Response:
        if not self.authorized(request):
            return _error(401, "Invalid API key", "authentication_error")
        return _json(200, {"object": "list", "data": [
            {"id": self.engine.model_id, "object": "model", "owned_by": "ember",
             "max_model_len": self.engine.max_model_len}]})

    async def answer(self, request: Request) -> Response | EventStream:
        kind = ROUTES[request.url.path]
        if not self.authorized(request):
            return _error(401, "Invalid API key", "authentication_error")
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            asked = body.get("model")
            if asked not in (None, "", self.engine.model_id):
                return _error(404, f"The model '{asked}' is not served here; this server serves "
                              f"'{self.engine.model_id}'", "model_not_found", served_models=[self.engine.model_id])
            ids = await run_in_threadpool(self.ids, kind, body)  # waits for the tokenizer's lock
        except ValueError as exc:
            return _error(400, f"bad request: {exc}", "invalid_request_error")
        n_prompt = int(ids.shape[-1])
        if n_prompt >= self.engine.max_model_len:
            return _error(400, f"request ({n_prompt} tokens) exceeds the available context size "
                          f"({self.engine.max_model_len} tokens), try increasing it", "exceed_context_size_error",
                          n_prompt_tokens=n_prompt, n_ctx=self.engine.max_model_len)
        cancel, out = threading.Event(), Pieces()
        threading.Thread(target=_generate, args=(self.engine, body, ids, cancel, out), name="answer",
                         daemon=True).start()
        answer = Answer(kind, ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24],
                        int(time.time()), self.engine.model_id)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return EventStream(self.events(answer, out, include_usage), cancel)
        return await self.whole(request, answer, out, cancel)

    def ids(self, kind: str, body: dict):
        """The prompt's token ids; ValueError for a body that is not a request of this kind."""
        if kind == "chat":
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                raise ValueError("'messages' must be a non-empty list")
            return self.engine.prompt_ids(body["messages"])
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("'prompt' must be a non-empty string")
        return self.engine.text_ids(prompt)

    @staticmethod
    async def events(answer: "Answer", out: Pieces, include_usage: bool):
        if answer.kind == "chat":
            yield answer.chunk({"role": "assistant", "content": ""})
        while True:
            item = await out.get()
            if isinstance(item, str):
                yield answer.chunk({"content": item})
                continue
            if item[0] == "error":
                yield b"data: " + json.dumps(_failed(item[1])).encode() + b"\n\n"
                return
            _, usage, finish = item
            yield answer.chunk({}, finish)
            if include_usage:
                yield answer.chunk(usage=usage)
            yield b"data: [DONE]\n\n"
            return

    @staticmethod
    async def whole(request: Request, answer: "Answer", out: Pieces, cancel: threading.Event) -> Response:
        """The answer in one JSON; a client that leaves before it is ready stops its generation."""
        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            cancel.set()

        watcher = asyncio.ensure_future(watch())
        try:
            text = ""
            while True:
                item = await out.get()
                if isinstance(item, str):
                    text += item
                    continue
                if item[0] == "error":
                    return _json(500, _failed(item[1]))
                _, usage, finish = item
                return _json(200, answer.whole(text, finish, usage))
        finally:
            watcher.cancel()


#: The POST routes and the kind of request each takes.
ROUTES = {"/v1/chat/completions": "chat", "/chat/completions": "chat",
          "/v1/completions": "completion", "/completions": "completion"}


@dataclass(frozen=True)
class Answer:
    """One answer's OpenAI shapes: chat (``chat.completion``) or text completion (``text_completion``)."""

    kind: str       # chat | completion
    id: str
    created: int
    model: str

    def chunk(self, delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
        """One SSE event: a piece of text (``delta``), the finish reason, or the usage alone."""
        choices = []
        if delta is not None or finish is not None:
            choices = [{"index": 0, "delta": delta or {}, "finish_reason": finish} if self.kind == "chat" else
                       {"index": 0, "text": (delta or {}).get("content", ""), "logprobs": None,
                        "finish_reason": finish}]
        event = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                 "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            event["usage"] = usage
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    def whole(self, text: str, finish: str, usage: dict) -> dict:
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                  if self.kind == "chat" else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
        return {"id": self.id, "object": "chat.completion" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": usage}


def make_app(engine: Engine, api_key: str | None):
    """The ASGI app serving ``engine`` behind ``api_key`` (None: no key)."""
    r = Routes(engine, api_key)

    async def no_route(request: Request, exc: Exception) -> Response:  # 404 and 405 alike, as before
        return _error(404, f"no route {request.url.path}", "not_found_error")

    async def crashed(request: Request, exc: Exception) -> Response:  # Uvicorn logs the traceback
        return _json(500, _failed(exc))

    routes = [Route("/health", r.health, methods=["GET"]),
              *(Route(path, r.models, methods=["GET"]) for path in ("/v1/models", "/models")),
              *(Route(path, r.answer, methods=["POST"]) for path in ROUTES)]
    return Starlette(routes=routes, exception_handlers={404: no_route, 405: no_route, Exception: crashed})


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound only once the model is loaded. Its protocol is named: asyncio turns
    Nagle off only on sockets that say TCP (else every answer waits 40 ms for a delayed ACK)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if os.name != "nt":  # a restarted engine may reuse its port at once (Windows would share it instead)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf_server", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a Hugging Face model folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int, default=0, help=f"context length (0: the model's, at most {DEFAULT_N_CTX})")
    p.add_argument("--max-new-tokens", type=int, default=512, help="default answer length")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--served-model-name", default="")
    p.add_argument("--trust-remote-code", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PREFIX} %(levelname)s %(message)s")
    if MISSING is not None:
        say(missing_stack(MISSING))
        return 1
    api_key = os.environ.pop("EMBER_API_KEY", None) or None
    engine = Engine(args)
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        say(f"cannot listen on {args.host}:{args.port}: {exc}")
        return 1
    # Uvicorn's loggers go through ours (the prefix): one line per request, its warnings and errors
    config = uvicorn.Config(make_app(engine, api_key), log_config=None, log_level="info", lifespan="off",
                            server_header=False, headers=[("server", "ember-hf")],
                            timeout_graceful_shutdown=1)  # Ctrl-C / SIGTERM: open answers get a second
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # not its start and stop chatter
    say(f"ready on http://{args.host}:{args.port}")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # Uvicorn stops gracefully, then raises the signal it caught again
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
