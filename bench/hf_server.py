"""The transformers engine's HTTP side alone: what Ember's server adds around the model.

The model is replaced by a scripted engine that writes its pieces as fast as it
can, so the numbers are the server's own cost: time to the first streamed
event, streamed pieces per second, and /health answers per second. With
``--against REV`` the same run is made on the server of a git revision (e.g. the
``http.server`` one before the move to Starlette) and the ratios are printed.

Run: .venv/bin/python bench/hf_server.py [--pieces 2000] [--against main]
"""
from __future__ import annotations

import argparse
import importlib.util
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = "sk-bench"


class _Ids:
    shape = (1, 8)


class FastEngine:
    """hf_server.Engine's surface: a fixed prompt, ``pieces`` one-word pieces as fast as possible."""

    model_id, max_model_len = "bench", 4096

    def __init__(self, pieces: int):
        self.pieces = pieces

    def prompt_ids(self, messages):
        return _Ids()

    text_ids = prompt_ids

    def generate(self, body, ids, cancel, out):
        n = int(body.get("max_tokens") or self.pieces)
        for _ in range(n):
            if cancel.is_set():
                break
            out.put(" word")
        out.put(("done", {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}, "length"))


def load(rev: str | None):
    """hf_server from the working tree, or from git revision ``rev``."""
    if rev is None:
        from engines.running import hf_server
        return hf_server
    text = subprocess.run(["git", "show", f"{rev}:engines/running/hf_server.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "hf_server_at_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"hf_server_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def serve(module, engine) -> tuple[int, callable]:
    """Start ``module``'s server for ``engine`` on a free port; returns (port, stop)."""
    if hasattr(module, "make_app"):  # Starlette on Uvicorn
        import uvicorn
        module.say = lambda text: None  # no line per request
        sock = module.listen("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(module.make_app(engine, KEY), log_config=None, log_level="warning",
                                               access_log=False, lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        return sock.getsockname()[1], lambda: (setattr(server, "should_exit", True), thread.join(10))
    from http.server import ThreadingHTTPServer  # the server before Starlette
    handler = module.make_handler(engine, KEY)
    handler.log_message = lambda *a: None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1], lambda: (srv.shutdown(), srv.server_close())


def measure(module, pieces: int, rounds: int) -> dict[str, float]:
    port, stop = serve(module, FastEngine(pieces))
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    # the client sends at once (else Nagle holds each request's body for the server's delayed ACK, 40 ms)
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60, transport=transport) as client:
            first = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                with client.stream("POST", "/v1/chat/completions", json=dict(body, max_tokens=1)) as r:
                    lines = r.iter_lines()
                    for line in lines:
                        if '"content": " word"' in line:
                            first.append(time.perf_counter() - t0)
                            break
                    for _ in lines:
                        pass
            t0 = time.perf_counter()
            got = 0
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {") and '"content": " word"' in line:
                        got += 1
            rate = got / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(rounds * 4):
                client.get("/health")
            health = rounds * 4 / (time.perf_counter() - t0)
    finally:
        stop()
    assert got == pieces, (got, pieces)
    return {"first_ms": statistics.median(first) * 1000, "pieces_per_s": rate, "health_per_s": health}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pieces", type=int, default=2000, help="pieces in the long streamed answer")
    ap.add_argument("--rounds", type=int, default=50, help="short answers for the first-event time")
    ap.add_argument("--against", metavar="REV", help="also run the server of this git revision")
    args = ap.parse_args()
    now = measure(load(None), args.pieces, args.rounds)
    print(f"this tree: first event {now['first_ms']:.2f} ms, {now['pieces_per_s']:.0f} pieces/s streamed, "
          f"{now['health_per_s']:.0f} /health per s")
    if args.against:
        old = measure(load(args.against), args.pieces, args.rounds)
        print(f"{args.against}: first event {old['first_ms']:.2f} ms, {old['pieces_per_s']:.0f} pieces/s streamed, "
              f"{old['health_per_s']:.0f} /health per s")
        print(f"ratios (this tree / {args.against}): first event {now['first_ms'] / old['first_ms']:.2f}, "
              f"streaming {now['pieces_per_s'] / old['pieces_per_s']:.2f}, "
              f"/health {now['health_per_s'] / old['health_per_s']:.2f}")


if __name__ == "__main__":
    main()
