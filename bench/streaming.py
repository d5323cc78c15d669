"""Ember's overhead over the raw engine, measured in one run on the starter model.

1. Decode speed: tokens/s streamed through Ember (supervisor child process +
   engines.chat.client) vs the raw ``xllamacpp.Server`` in this process read with a
   bare httpx loop, same prompt and settings, alternating, median of N runs.
2. Time to ready: ``ember serve starter`` until it prints its JSON line vs the
   raw ``xllamacpp.Server(params)`` constructor.

Prints both ratios; targets: streaming >= 0.97, ready overhead <= 1.5 s.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
N_TOKENS = 256
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
N_CTX = 2048


def measure_stream(base_url: str, api_key: str | None, use_ember_client: bool) -> float:
    """Decode tokens/s seen by the client: tokens after the first over the time they took."""
    body = {"messages": PROMPT, "max_tokens": N_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True}
    if use_ember_client:
        from engines.chat.client import ChatStream, Delta, Finished
        first = last = None
        n = 0
        for ev in ChatStream(base_url, PROMPT, api_key, max_tokens=N_TOKENS, temperature=0, ignore_eos=True):
            if isinstance(ev, Delta):
                now = time.perf_counter()
                first = first or now
                last = now
            elif isinstance(ev, Finished):
                n = ev.usage.completion_tokens
        return (n - 1) / (last - first)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    first = last = None
    n = 0
    with httpx.Client(timeout=600) as c, c.stream("POST", base_url + "/chat/completions", json=body,
                                                  headers=headers) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                n = ev["usage"]["completion_tokens"]
            if ev.get("choices") and ev["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
    return (n - 1) / (last - first)


def raw_server(model_path: str):
    import xllamacpp
    p = xllamacpp.CommonParams()
    p.model.path = model_path
    p.n_ctx = N_CTX
    p.n_parallel = 1
    p.n_gpu_layers = 0
    p.fit_params = False
    p.port = 0
    t = time.perf_counter()
    s = xllamacpp.Server(p)
    return s, time.perf_counter() - t


RAW_LOAD = """
import sys, time, os, xllamacpp
p = xllamacpp.CommonParams(); p.model.path = sys.argv[1]; p.n_ctx = int(sys.argv[2]); p.n_parallel = 1
p.n_gpu_layers = 0; p.fit_params = False; p.port = 0
t = time.perf_counter(); s = xllamacpp.Server(p); print(time.perf_counter() - t, flush=True); os._exit(0)
"""


def raw_ready_time(model_path: str) -> float:
    """The raw Server constructor's load time, in a fresh process (destroying a Server can block)."""
    out = subprocess.run([sys.executable, "-c", RAW_LOAD, model_path, str(N_CTX)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def ember_serve_ready(env) -> tuple[float, subprocess.Popen, dict]:
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "engines.cli", "serve", "starter", "--set", f"n_ctx={N_CTX}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    info = json.loads(proc.stdout.readline())
    return time.perf_counter() - t, proc, info


def main() -> None:
    home = tempfile.mkdtemp(prefix="ember-bench-")
    env = dict(os.environ, EMBER_HOME=os.environ.get("EMBER_HOME", home))
    os.environ["EMBER_HOME"] = env["EMBER_HOME"]
    from engines.models import store
    path = str(store.ensure_starter())

    # time to ready, alternating, after one warm-up of each so the file is in the page cache
    raw_ready, ember_ready = [], []
    raw_ready_time(path)
    for _ in range(3):
        raw_ready.append(raw_ready_time(path))
        dt, proc, info = ember_serve_ready(env)
        ember_ready.append(dt)
        proc.terminate()
        proc.wait()

    # decode speed, alternating raw / Ember
    s, _ = raw_server(path)
    raw_url = s.listening_address + "/v1"
    dt, proc, info = ember_serve_ready(env)
    raw_tps, ember_tps = [], []
    try:
        measure_stream(raw_url, None, False)  # warm-up
        measure_stream(info["base_url"], info["api_key"], True)
        for _ in range(RUNS):
            raw_tps.append(measure_stream(raw_url, None, False))
            ember_tps.append(measure_stream(info["base_url"], info["api_key"], True))
    finally:  # `ember serve` outlives a killed parent by design (it is a server): stop it here
        proc.terminate()
        proc.wait()

    r, e = statistics.median(raw_tps), statistics.median(ember_tps)
    rr, er = statistics.median(raw_ready), statistics.median(ember_ready)
    print(f"decode tokens/s   raw {r:7.1f}   ember {e:7.1f}   ratio {e / r:.3f}   (target >= 0.97)")
    print(f"time to ready     raw {rr:6.2f} s  ember serve {er:6.2f} s  overhead {er - rr:+.2f} s   (target <= 1.5 s)")
    print(f"runs: {RUNS} streams of {N_TOKENS} tokens each; ready: 3 starts each; n_ctx {N_CTX}; CPU only")
    os._exit(0)  # xllamacpp.Server blocks interpreter shutdown


if __name__ == "__main__":
    main()
