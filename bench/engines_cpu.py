"""Start time and decode speed of each CPU engine on the same model, as ratios to llama.cpp.

llama.cpp runs the starter GGUF (Q4_K_M); transformers and MLX run the same model
converted to safetensors (bf16 on disk; transformers computes in fp32 on the CPU).
Start is spawn to ready (the port answers with the model loaded); speed is the
client's tokens/s over a 64-token greedy answer, after one warm-up request.

Run: .venv/bin/python bench/engines_cpu.py [--tokens 64]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.running import launch
from engines.models import store  # noqa: E402
from engines.chat.client import ChatStream, Finished  # noqa: E402


def converted_folder() -> Path:
    path = ROOT / "tests" / "fixtures" / "safetensors_model.py"
    spec = importlib.util.spec_from_file_location("ember_test_safetensors_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ensure(store.ensure_starter())


def measure(model: str, engine: str, tokens: int) -> tuple[float, float]:
    plan = launch.plan(model, engine=engine)
    t0 = time.monotonic()
    proc = launch.start(plan, timeout=300)
    start = time.monotonic() - t0
    try:
        messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
        list(ChatStream(proc.base_url, messages, proc.api_key, max_tokens=4, temperature=0))  # warm-up
        fin = [e for e in ChatStream(proc.base_url, messages, proc.api_key, max_tokens=tokens, temperature=0)
               if isinstance(e, Finished)][0]
        return start, fin.tokens_per_second or 0.0
    finally:
        proc.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    folder = str(converted_folder())
    runs = [("llamacpp", "starter"), ("transformers", folder), ("mlx", folder)]
    results = {engine: measure(model, engine, args.tokens) for engine, model in runs}
    base_start, base_tps = results["llamacpp"]
    for engine, (start, tps) in results.items():
        print(f"{engine:<13} start {start:6.2f} s ({start / base_start:5.1f}x llama.cpp)   "
              f"decode {tps:6.1f} tokens/s ({tps / base_tps if base_tps else 0:5.2f}x llama.cpp)")


if __name__ == "__main__":
    main()
