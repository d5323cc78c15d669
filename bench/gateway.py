"""The local API gateway's cost, measured in one run on the starter model (issue 13's targets).

1. Streaming: tokens/s of one engine reached directly vs the same engine through
   ``ember serve --port N`` (a separate process, as tools use it), alternating A/B,
   median of N rounds. The engine is registered with the gateway as a remote
   endpoint, so both paths reach the very same process; the proxy code is the same
   one local models go through. Target >= 0.97.
2. Time to first token added by the gateway (same pairs). Target <= 20 ms.
3. First answer for a model not yet running (the gateway starts the starter on
   demand) vs the raw engine's load plus its first answer. Target <= raw + 1.5 s.
4. 32 concurrent streams to one model with n_parallel 4 through the gateway:
   none dropped (each ends with its usage), none stalled (no gap over 30 s).

Run: ``.venv/bin/python bench/gateway.py`` (BENCH_RUNS=5 by default).
"""
from __future__ import annotations

import json
import os
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

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
N_TOKENS = 192
PROMPT = "Write a long story about a lighthouse keeper."
RAW_LOAD = """
import sys, time, os, xllamacpp
p = xllamacpp.CommonParams(); p.model.path = sys.argv[1]; p.n_ctx = 2048; p.n_parallel = 1
p.n_gpu_layers = 0; p.fit_params = False; p.port = 0
t = time.perf_counter(); s = xllamacpp.Server(p); print(time.perf_counter() - t, flush=True); os._exit(0)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(base_url: str, key: str, model: str | None, max_tokens: int = N_TOKENS) -> tuple[float, float, int]:
    """(seconds to the first token, decode tokens/s after it, tokens) for one streamed completion."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    start = time.perf_counter()
    first = last = None
    n = 0
    with httpx.Client(timeout=600) as c, c.stream("POST", base_url + "/completions", json=body,
                                                  headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                n = ev["usage"]["completion_tokens"]
            if ev.get("choices") and ev["choices"][0].get("text"):
                now = time.perf_counter()
                first = first or now
                last = now
    return first - start, (n - 1) / (last - first) if last > first else 0.0, n


def serve(env: dict, port: int) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "engines.cli", "serve", "--port", str(port), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    return proc, json.loads(proc.stdout.readline())


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def concurrent_streams(url: str, key: str, n: int = 32, max_tokens: int = 32) -> tuple[int, int, float]:
    """(streams that ended with their usage, streams with a gap over 30 s, wall seconds)."""
    done, stalled = [], []

    def one(i: int) -> None:
        body = {"model": "starter", "prompt": f"Story number {i}:", "max_tokens": max_tokens, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        last, worst, usage = time.monotonic(), 0.0, None
        try:
            with httpx.Client(timeout=600) as c, c.stream("POST", url + "/completions", json=body,
                                                          headers={"Authorization": f"Bearer {key}"}) as r:
                for line in r.iter_lines():
                    now = time.monotonic()
                    worst, last = max(worst, now - last), now
                    if line.startswith("data: {") and '"usage"' in line:
                        usage = json.loads(line[6:]).get("usage") or usage
        except httpx.HTTPError as exc:
            print(f"  stream {i}: {exc}")
        if usage and usage.get("completion_tokens") == max_tokens:
            done.append(i)
        if worst > 30:
            stalled.append(i)

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(done), len(stalled), time.monotonic() - started


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="ember-bench-gw-"))
    os.environ["EMBER_HOME"] = str(home)
    from engines import model_prefs
    from engines.chat import remotes
    from engines.models import store
    from engines.running import launch
    path = str(store.ensure_starter())

    # 3. first answer for a model not yet running, vs raw load + its first answer (page cache warm)
    raw_loads = [float(subprocess.run([sys.executable, "-c", RAW_LOAD, path], capture_output=True, text=True,
                                      check=True).stdout.split()[-1]) for _ in range(2)][1:]
    direct = launch.start(launch.plan("starter", overrides={"n_ctx": 2048}))
    direct_first = statistics.median(stream(direct.base_url, direct.api_key, None, 1)[0] for _ in range(3))
    env = dict(os.environ, EMBER_HOME=str(home), BENCH_ENGINE_KEY=direct.api_key)
    remotes.add("direct", direct.base_url, key_env="BENCH_ENGINE_KEY")
    cold = []
    for _ in range(2):
        proc, info = serve(env, free_port())
        t = time.perf_counter()
        stream(info["base_url"], info["api_key"], "starter", 1)
        cold.append(time.perf_counter() - t)
        stop(proc)

    # 1 + 2. the same engine directly and through the gateway, alternating
    proc, info = serve(env, free_port())
    try:
        through = "direct/starter"
        stream(direct.base_url, direct.api_key, None, 16)
        stream(info["base_url"], info["api_key"], through, 16)  # warm-up (lists the remote once)
        a_tps, b_tps, a_ttft, b_ttft = [], [], [], []
        for _ in range(RUNS):
            t, tps, _ = stream(direct.base_url, direct.api_key, None)
            a_ttft.append(t)
            a_tps.append(tps)
            t, tps, _ = stream(info["base_url"], info["api_key"], through)
            b_ttft.append(t)
            b_tps.append(tps)
    finally:
        stop(proc)
        direct.stop()

    # 4. 32 streams at once to the starter with n_parallel 4 (the model's saved parameters)
    model_prefs.save("starter", model_prefs.ModelPrefs(params={"n_parallel": 4, "n_ctx": 4096}))
    proc, info = serve(env, free_port())
    try:
        stream(info["base_url"], info["api_key"], "starter", 1)  # loaded before the clock starts
        ok, stalled, wall = concurrent_streams(info["base_url"], info["api_key"])
    finally:
        stop(proc)

    ra, rb = statistics.median(a_tps), statistics.median(b_tps)
    ta, tb = statistics.median(a_ttft), statistics.median(b_ttft)
    load = statistics.median(raw_loads) + direct_first
    print(f"stream tokens/s     direct {ra:7.1f}   gateway {rb:7.1f}   ratio {rb / ra:.3f}   (target >= 0.97)")
    print(f"first token         direct {ta * 1000:6.1f} ms gateway {tb * 1000:6.1f} ms  added {1000 * (tb - ta):+.1f} ms"
          f"   (target <= 20 ms)")
    print(f"cold first answer   raw load + answer {load:5.2f} s   gateway {statistics.median(cold):5.2f} s   "
          f"overhead {statistics.median(cold) - load:+.2f} s   (target <= 1.5 s)")
    print(f"32 streams, n_parallel 4: {ok}/32 complete, {stalled} stalled, {wall:.1f} s")
    print(f"rounds: {RUNS} alternating pairs of {N_TOKENS}-token streams; CPU only; {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
