"""Guided errors provoked for real with the starter model and llama.cpp on this CPU.

Each test makes the engine fail the way users meet it, checks the diagnosis'
kind and numbers, and where a parameter fix is offered, applies it with
``plan.with_changes`` and relaunches: the same request must then succeed.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import threading
import time
from dataclasses import replace

import pytest

from engines.chat import client
from engines.diagnosis import diagnose
from engines.running import launch
from engines.running import params
from engines.running import supervisor
from engines.diagnosis.types import Kind

pytestmark = pytest.mark.slow

# About 1,000 tokens for the starter's tokenizer.
LONG = "The quick brown fox jumps over the lazy dog. " * 100


def _ask(proc, text=LONG, max_tokens=8, **options):
    events = list(client.ChatStream(proc.base_url, [{"role": "user", "content": text}], proc.api_key,
                                    max_tokens=max_tokens, temperature=0, **options))
    return events[-1]


def _fails(proc, plan, text=LONG, max_tokens=8):
    try:
        _ask(proc, text, max_tokens)
    except client.ClientError as exc:
        d = diagnose.diagnose_exception(exc, proc=proc, plan=plan)
        assert d is not None
        return d
    raise AssertionError("the request did not fail")


def _start_fails(plan, **kw):
    with pytest.raises(supervisor.EngineStartError) as info:
        proc = launch.start(plan, timeout=60, **kw)
        proc.stop()
    d = diagnose.diagnose_exception(info.value, plan=plan)
    assert d is not None
    return d, info.value


def _fixed(plan, d, key):
    fix = next(f for f in d.fixes if key in f.changes)
    return plan.with_changes(fix.changes), fix


def test_prompt_longer_than_context_then_raise_n_ctx(starter_spec, hw):
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 512})
    with launch.start(plan, timeout=60) as proc:
        d = _fails(proc, plan)
    assert d.kind == Kind.CONTEXT_EXCEEDED
    n_prompt = d.facts["n_prompt_tokens"]
    assert n_prompt > 512 and d.facts["n_ctx_slot"] == 512
    assert f"Your message needs {n_prompt:,} tokens; each slot holds 512 (n_ctx 512 / n_parallel 1)." \
        in d.explanation
    assert d.primary_fix.changes == {"n_ctx": 2048}  # prompt + room for the answer, rounded up to 1,024
    assert any(f.action == "new_conversation" for f in d.fixes)
    new_plan, _ = _fixed(plan, d, "n_ctx")
    with launch.start(new_plan, timeout=60) as proc:
        fin = _ask(proc)
    assert fin.finish_reason in ("stop", "length") and fin.usage.prompt_tokens == n_prompt


def test_small_slots_via_n_parallel_then_fewer_slots(starter_spec, hw):
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 1024, "n_parallel": 4})
    text = "Tell me about the fox and the dog. " * 40  # ~370 tokens: more than a slot's 256
    with launch.start(plan, timeout=60) as proc:
        d = _fails(proc, plan, text)
    assert d.kind == Kind.CONTEXT_EXCEEDED
    assert d.facts["n_ctx_slot"] == 256 and d.facts["n_parallel"] == 4
    assert "each slot holds 256 (n_ctx 1,024 / n_parallel 4)" in d.explanation
    fix = d.primary_fix
    assert fix.changes == {"n_parallel": 1}  # no extra memory needed
    assert any(f.changes.get("n_ctx") == 4096 for f in d.fixes)
    with launch.start(plan.with_changes(fix.changes), timeout=60) as proc:
        fin = _ask(proc, text)
    assert fin.finish_reason in ("stop", "length")


def test_kv_cache_cannot_be_allocated_then_smaller_context(starter_spec, hw):
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 10_000_000})
    assert any("more than this computer" in w or "trained on" in w for w in plan.warnings)
    t0 = time.monotonic()
    d, err = _start_fails(plan)
    assert time.monotonic() - t0 < 30
    assert d.kind == Kind.OOM_LOAD
    assert d.facts["n_ctx"] == 10_000_000 and d.facts["alloc_bytes"] > 20 * 1024 ** 3
    assert "KV cache" in d.explanation and "10,000,000" in d.explanation
    labels = {k for f in d.fixes for k in f.changes}
    assert {"n_ctx", "cache_type_k", "cache_type_v"} <= labels
    assert d.log_path == str(err.log_path) and d.log_tail
    new_plan, fix = _fixed(plan, d, "n_ctx")
    assert fix.changes["n_ctx"] <= starter_spec.context_length
    with launch.start(new_plan, timeout=60) as proc:
        assert _ask(proc, "Hello", 4).finish_reason in ("stop", "length")


def test_shared_kv_cache_full_with_concurrent_streams(starter_spec, hw):
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 512, "n_parallel": 4, "kv_unified": True})

    def four_at_once(proc) -> list[object]:
        """Four streamed answers at the same time: 4 x (~90 + 80) tokens, more than 512, less than 1,024."""
        results: list[object] = []

        def one(i):
            try:
                results.append(_ask(proc, f"Write a long story about dragon number {i}. " * 8, 80))
            except client.ClientError as exc:
                results.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return results

    with launch.start(plan, timeout=60) as proc:
        offset = proc.log_size()
        results = four_at_once(proc)
        errors = [r for r in results if isinstance(r, client.EngineHTTPError)]
        assert errors, results
        d = diagnose.diagnose_exception(errors[0], proc=proc, plan=plan, log_offset=offset)
    assert d.kind == Kind.KV_CACHE_FULL
    assert d.facts["status"] == 500 and d.facts["cause"] == "space" and d.facts["kv_unified"] is True
    assert "shared by 4 slots" in d.explanation
    assert d.primary_fix.changes == {"n_ctx": 1024}
    assert any(f.changes == {"n_parallel": 1} for f in d.fixes)
    with launch.start(plan.with_changes(d.primary_fix.changes), timeout=60) as proc:
        results = four_at_once(proc)
    assert len(results) == 4 and all(isinstance(r, client.Finished) for r in results), results


# -- broken model files ------------------------------------------------------------------

def _broken(tmp_path, starter_path, kind):
    path = tmp_path / f"{kind}.gguf"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_gguf":
        path.write_bytes(b"_I\xff\xfe this is not a model\n" * 100)
    elif kind == "header_only":
        with open(starter_path, "rb") as f:
            path.write_bytes(f.read(24))
    elif kind == "truncated":
        with open(starter_path, "rb") as f:
            path.write_bytes(f.read(os.path.getsize(starter_path) // 2))
    elif kind == "unknown_arch":
        shutil.copyfile(starter_path, path)
        _rename_architecture(path, b"gemma3", b"foobar")
    return path


def _rename_architecture(path, old: bytes, new: bytes):
    """Rewrite the value of general.architecture in place (same length)."""
    assert len(old) == len(new)
    with open(path, "r+b") as f:
        head = f.read(1024 * 1024)
        key = head.find(b"general.architecture")
        value = head.find(struct.pack("<Q", len(old)) + old, key)
        assert key > 0 and value > key
        f.seek(value + 8)
        f.write(new)


BROKEN = [
    ("empty", "empty", "The model file is empty"),
    ("not_gguf", "not_gguf", "not a GGUF model file"),
    ("header_only", "truncated", "The model file is incomplete"),
    ("truncated", "truncated", "The model file is incomplete"),
    ("unknown_arch", "unknown_architecture", "does not know the model's architecture ('foobar')"),
]


@pytest.mark.parametrize("make,problem,words", BROKEN)
def test_broken_model_file_at_engine_start(tmp_path, starter_path, starter_spec, hw, make, problem, words):
    """The engine's own log names the problem; the header check is bypassed to see it."""
    path = _broken(tmp_path, starter_path, make)
    plan = launch.plan(replace(starter_spec, path=str(path)), hw, overrides={"n_ctx": 512})
    d, _ = _start_fails(plan)
    assert d.kind == Kind.INVALID_MODEL
    assert d.facts["problem"] == problem
    assert words in d.explanation
    assert all(not f.changes for f in d.fixes)  # no parameter helps a broken file
    assert {f.action for f in d.fixes} & {"redownload", "choose_model", "install"}


def test_missing_model_file_at_engine_start(tmp_path, starter_spec, hw):
    """The file vanished between planning and launch."""
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 512})
    plan = replace(plan, model=replace(starter_spec, path=str(tmp_path / "gone.gguf")))
    d, _ = _start_fails(plan)
    assert d.kind == Kind.INVALID_MODEL and d.facts["problem"] == "missing"
    assert "does not exist" in d.explanation


@pytest.mark.parametrize("make,kind_word", [("empty", "empty"), ("not_gguf", "not a GGUF"),
                                            ("truncated", "truncated")])
def test_broken_model_file_before_launch(tmp_path, starter_path, make, kind_word):
    """Ember's own header check refuses the file before any engine starts."""
    from engines.models import store
    path = _broken(tmp_path, starter_path, make)
    with pytest.raises(store.ModelError) as info:
        launch.plan(str(path))
    d = diagnose.diagnose_exception(info.value)
    assert d.kind == Kind.INVALID_MODEL and kind_word in d.explanation


def test_port_already_taken(starter_spec, hw):
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 512})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        d, _ = _start_fails(plan, port=port)
    assert d.kind == Kind.PORT_IN_USE
    assert d.facts["port"] == port and f"port {port}" in d.explanation


def test_engine_killed_mid_stream(starter_spec, hw):
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 512})
    proc = launch.start(plan, timeout=60)
    try:
        # a wrong API key first (what a misconfigured remote endpoint answers too)
        with pytest.raises(client.EngineHTTPError) as wrong:
            list(client.ChatStream(proc.base_url, [{"role": "user", "content": "Hi"}], "wrong-key", max_tokens=2))
        d = diagnose.diagnose_exception(wrong.value)
        assert d.kind == Kind.AUTH_FAILED and d.facts["status"] == 401
        stream = client.ChatStream(proc.base_url, [{"role": "user", "content": "Count from one to a thousand."}],
                                   proc.api_key, max_tokens=400)
        with pytest.raises(client.StreamBroken) as info:
            for n, ev in enumerate(stream):
                if n == 3:
                    os.kill(proc.pid, signal.SIGKILL)
        d = diagnose.diagnose_exception(info.value, proc=proc, plan=plan)
    finally:
        proc.stop()
    assert d.kind == Kind.ENGINE_CRASHED
    assert d.facts["signal"] == 9 and d.facts["signal_name"] == "SIGKILL"
    assert "was killed by SIGKILL" in d.explanation
    assert d.primary_fix.action == "relaunch" and d.log_tail
    # the address no longer answers: for a remote endpoint (no process of ours) that is "unreachable"
    with pytest.raises(client.StreamBroken) as gone:
        list(client.ChatStream(proc.base_url, [{"role": "user", "content": "Hi"}], proc.api_key, max_tokens=2))
    d = diagnose.diagnose_exception(gone.value)
    assert d.kind == Kind.UNREACHABLE and f"127.0.0.1:{proc.port}" in d.explanation


def test_n_parallel_zero_refused_before_launch():
    with pytest.raises(params.ParamError) as info:
        launch.plan("starter", overrides={"n_parallel": 0})
    d = diagnose.diagnose_exception(info.value)
    assert d.kind == Kind.BAD_PARAMETER
    assert "n_parallel" in d.title and "wait forever" in d.explanation
    assert d.primary_fix.changes == {"n_parallel": 1}


def test_reply_cut_short_by_slot_context(starter_spec, hw):
    plan = launch.plan(starter_spec, hw, overrides={"n_ctx": 512, "n_parallel": 2})  # 256 per slot
    with launch.start(plan, timeout=60) as proc:
        fin = _ask(proc, "Count from one to one hundred, one number per line.", 300)
    assert fin.finish_reason == "length" and fin.usage.completion_tokens < 260
    d = diagnose.diagnose_finish(fin, plan)
    assert d.kind == Kind.REPLY_CUT_SHORT
    assert d.facts["n_ctx_slot"] == 256
    assert "filling the slot's 256 tokens (n_ctx 512 / n_parallel 2)" in d.explanation
    assert any("n_ctx" in f.changes or "n_parallel" in f.changes for f in d.fixes)


def test_cli_chat_prints_the_diagnosis(starter_path):
    import json
    import subprocess
    import sys

    r = subprocess.run((sys.executable, "-m", "engines.cli", "chat", "starter", "--set", "n_ctx=256", "--json", "-q", "--max-tokens", "4",
                                 LONG), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    d = json.loads(r.stderr[r.stderr.index("{"):])
    assert d["kind"] == "context_exceeded" and d["facts"]["n_ctx_slot"] == 256
    assert d["fixes"][0]["changes"] == {"n_ctx": 2048}


def test_engine_that_cannot_run_the_model(starter_spec, hw):
    """Asking for vLLM for a GGUF file: the reasons from selection, and the engine that can."""
    with pytest.raises(launch.PlanError) as info:
        launch.plan(starter_spec, hw, engine="vllm")
    d = diagnose.diagnose_exception(info.value)
    assert d.kind == Kind.NOT_SUPPORTED
    assert "vLLM: vLLM runs PyTorch, AWQ or GPTQ models; this one is GGUF" in d.explanation
    assert d.primary_fix.label == "Use llama.cpp instead" and d.primary_fix.action == "use_engine:llamacpp"
