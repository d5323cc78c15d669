"""A thin OpenAI-compatible server for one transformers model (the transformers engine).

Why our own: ``transformers serve`` (5.x) needs FastAPI and Uvicorn
(``transformers[serving]``), loads models on demand behind a timeout and has no
API key; Ember needs one model loaded before "ready", a Bearer key and a
readiness answer. This file depends only on the standard library, torch,
transformers and :mod:`engines.units` (itself standard library only), so it
runs under any interpreter the user picked for the transformers engine
(``engine_python.transformers``); the launcher puts Ember's folder on
``PYTHONPATH``.

Endpoints: ``GET /health`` (200 once the model is loaded; the port is not even
open before), ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (text to continue, for models without a chat
template), each streaming SSE or one JSON answer. The model id is the served
name (``--served-model-name``, what ``ember serve`` prints), never a path; a
request naming another model gets 404 listing the served one. The API key
comes from the environment (``EMBER_API_KEY``), never the command line. One
generation runs at a time; a client that goes away stops its generation.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from engines.units import DEFAULT_N_CTX

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

    def generate(self, body: dict, ids, cancel: threading.Event, out: "queue.Queue"):
        """Run one generation, putting text pieces then ("done", usage, finish) on ``out``."""
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


class ChatHandler(BaseHTTPRequestHandler):
    """The HTTP side: routes, the API key, and the answer streamed as SSE or sent whole.

    :func:`make_handler` binds it to one engine and key (``http.server`` makes
    one handler per request from the class, so they are class attributes).
    """

    protocol_version = "HTTP/1.1"
    server_version = "ember-hf"
    engine: Engine
    api_key: str | None = None

    def log_message(self, fmt, *args):  # one short line per request in the engine log
        say(f"{self.command} {self.path} -> {fmt % args}")

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, type_: str, **fields) -> None:
        self._json(status, {"error": {"message": message, "type": type_, "code": status, **fields}})

    def _authorized(self) -> bool:
        if not self.api_key:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {self.api_key}":
            return True
        self._error(401, "Invalid API key", "authentication_error")
        return False

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._json(200, {"status": "ok"})
        elif path in ("/v1/models", "/models"):
            if self._authorized():
                self._json(200, {"object": "list", "data": [
                    {"id": self.engine.model_id, "object": "model", "owned_by": "ember",
                     "max_model_len": self.engine.max_model_len}]})
        else:
            self._error(404, f"no route {path}", "not_found_error")

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        kind = ROUTES.get(path)
        if kind is None:
            self._error(404, f"no route {path}", "not_found_error")
            return
        if not self._authorized():
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if not self._served(body):
                return
            ids = self._ids(kind, body)
        except ValueError as exc:
            self._error(400, f"bad request: {exc}", "invalid_request_error")
            return
        n_prompt = int(ids.shape[-1])
        if n_prompt >= self.engine.max_model_len:
            self._error(400, f"request ({n_prompt} tokens) exceeds the available context size "
                        f"({self.engine.max_model_len} tokens), try increasing it", "exceed_context_size_error",
                        n_prompt_tokens=n_prompt, n_ctx=self.engine.max_model_len)
            return
        cancel, out = threading.Event(), queue.Queue()
        threading.Thread(target=self.engine.generate, args=(body, ids, cancel, out), daemon=True).start()
        answer = Answer(kind, ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24],
                        int(time.time()), self.engine.model_id)
        if body.get("stream"):
            self._stream(body, answer, cancel, out)
        else:
            self._whole(answer, out)

    def _ids(self, kind: str, body: dict):
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

    def _served(self, body: dict) -> bool:
        """Whether the request names the served model (or none); else a 404 that lists it."""
        asked = body.get("model")
        if asked in (None, "", self.engine.model_id):
            return True
        self._error(404, f"The model '{asked}' is not served here; this server serves '{self.engine.model_id}'",
                    "model_not_found", served_models=[self.engine.model_id])
        return False

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, body, answer: "Answer", cancel, out) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        try:
            if answer.kind == "chat":
                self._send_chunk(answer.chunk({"role": "assistant", "content": ""}))
            while True:
                item = out.get()
                if isinstance(item, str):
                    self._send_chunk(answer.chunk({"content": item}))
                    continue
                if item[0] == "error":
                    err = {"error": {"message": f"{type(item[1]).__name__}: {item[1]}", "type": "server_error",
                                     "code": 500}}
                    self._send_chunk(b"data: " + json.dumps(err).encode() + b"\n\n")
                    break
                _, usage, finish = item
                self._send_chunk(answer.chunk({}, finish))
                if include_usage:
                    self._send_chunk(answer.chunk(usage=usage))
                self._send_chunk(b"data: [DONE]\n\n")
                break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            cancel.set()  # the client left: stop generating for it
            self.close_connection = True

    def _whole(self, answer: "Answer", out) -> None:
        text = ""
        while True:
            item = out.get()
            if isinstance(item, str):
                text += item
                continue
            if item[0] == "error":
                self._error(500, f"{type(item[1]).__name__}: {item[1]}", "server_error")
                return
            _, usage, finish = item
            self._json(200, answer.whole(text, finish, usage))
            return


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


def make_handler(engine: Engine, api_key: str | None) -> type[ChatHandler]:
    """The handler class for ``ThreadingHTTPServer``, serving ``engine`` behind ``api_key``."""
    return type("Handler", (ChatHandler,), {"engine": engine, "api_key": api_key})


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
    api_key = os.environ.pop("EMBER_API_KEY", None) or None
    engine = Engine(args)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(engine, api_key))
    server.daemon_threads = True
    say(f"ready on http://{args.host}:{args.port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
