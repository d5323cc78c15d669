"""The classifier on real log lines and error bodies, and the fixes it computes.

Lines this CPU machine cannot produce (Metal, CUDA, image encoding) are the
seed's verbatim logs and real-shaped variants: those tests are marked
``logfixture``. The GPU machines are fake hardware profiles (named as such),
with the shapes ``engines.machine.hardware`` produces.
"""
from __future__ import annotations

import json
import sys
import types

import pytest

from engines.chat import client
from engines.diagnosis import diagnose
from engines.diagnosis.types import Fix, Kind, log_table
from engines.running import backends, launch, supervisor
from engines.running.backends.base import Roles
from engines.running.backends.transformers import Transformers
from engines.machine.hardware import GPU, HardwareProfile

GIB = 1024 ** 3

# -- fake machines -------------------------------------------------------------------------


def fake_cuda_pc() -> HardwareProfile:
    return HardwareProfile("linux", "x86_64", 16, 64 * GIB, 58 * GIB,
                           [GPU("NVIDIA GeForce RTX 4090 (fake)", "nvidia", "cuda", 24 * GIB, 22 * GIB, "CUDA0")],
                           "fake CPU", False, "cuda")


def fake_mac() -> HardwareProfile:
    return HardwareProfile("darwin", "arm64", 8, 16 * GIB, 10 * GIB,
                           [GPU("Apple M2 (fake)", "apple", "metal", 11 * GIB, 10 * GIB, "MTL0")],
                           "Apple M2", True, "metal")


def fake_cpu_box() -> HardwareProfile:
    return HardwareProfile("linux", "x86_64", 4, 8 * GIB, 6 * GIB, [], "fake CPU", False, "cpu")


@pytest.fixture(scope="module")
def plans(starter_path):
    return {
        "cuda": launch.plan("starter", fake_cuda_pc(), overrides={"n_ctx": 8192}),
        "mac": launch.plan("starter", fake_mac(), overrides={"n_ctx": 8192, "n_parallel": 2}),
        "cpu": launch.plan("starter", fake_cpu_box(), overrides={"n_ctx": 2048}),
    }


# -- the seed's verbatim logs ("Common Issues") -----------------------------------------------

SEED_IMAGE = """\
encoding image or slice...
slot update_slots: id  0 | task 0 | kv cache rm [10, end)
srv  process_chun: processing image...
ggml_metal_graph_compute: command buffer 0 failed with status 5
error: Internal Error (0000000e:Internal Error)
clip_image_batch_encode: ggml_backend_sched_graph_compute failed with error -1
failed to encode image
srv  process_chun: image processed in 2288 ms
mtmd_helper_eval failed with status 1
slot update_slots: id  0 | task 0 | failed to process image, res = 1""".splitlines()

SEED_KV_FULL = """\
ggml_metal_graph_compute: command buffer 1 failed with status 5
error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)
graph_compute: ggml_backend_sched_graph_compute_async failed with error -1
llama_decode: failed to decode, ret = -3
srv  update_slots: failed to decode the batch: KV cache is full - try increasing it via the context size, i = 0, n_batch = 2048, ret = -3""".splitlines()

# CUDA out of memory while loading (llama.cpp's allocator wording, real-shaped).
CUDA_OOM_LOAD = """\
load_tensors: offloading 18 repeating layers to GPU
load_tensors: offloaded 19/19 layers to GPU
ggml_backend_cuda_buffer_type_alloc_buffer: allocating 48.00 MiB on device 0: cudaMalloc failed: out of memory
alloc_tensor_range: failed to allocate CUDA0 buffer of size 50331648
llama_model_load: error loading model: unable to allocate CUDA0 buffer
llama_model_load_from_file_impl: failed to load model
srv    load_model: failed to load model, '/models/x.gguf'
ember-worker: llama.cpp failed to start: Failed to init server, please check the input params.""".splitlines()

CUDA_OOM_KV = """\
llama_kv_cache: layer   0: dev = CUDA0
ggml_backend_cuda_buffer_type_alloc_buffer: allocating 16384.00 MiB on device 0: cudaMalloc failed: out of memory
llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache
srv    load_model: failed to create_context with model '/models/x.gguf'""".splitlines()

# -- lines provoked on this machine (FACTS.md) ---------------------------------------------------

LINES = [
    ("gguf_init_from_file: failed to open GGUF file '/m/x.gguf' (No such file or directory)", "invalid_model",
     {"problem": "missing"}),
    ("gguf_init_from_reader: failed to read magic", "invalid_model", {"problem": "empty"}),
    ("gguf_init_from_reader: invalid magic characters: '_I??', expected 'GGUF'", "invalid_model",
     {"problem": "not_gguf", "magic": "_I??"}),
    ("gguf_init_from_reader: failed to read key-value pairs", "invalid_model", {"problem": "truncated"}),
    ("llama_model_load: error loading model: tensor 'token_embd.weight' data is not within the file bounds, "
     "model is corrupted or incomplete", "invalid_model", {"problem": "truncated"}),
    ("llama_model_load: error loading model: unknown model architecture: 'foobar'", "invalid_model",
     {"problem": "unknown_architecture", "architecture": "foobar"}),
    ("0.01.097.806 E ggml_aligned_malloc: insufficient memory (attempted to allocate 29297.25 MB)", "oom_load",
     {"memory": "ram", "alloc_mb": "29297.25"}),
    ("llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache", "oom_load", {}),
    ("start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 47123", "port_in_use", {"port": "47123"}),
    ("n_seq_max must be <= 256", "bad_parameter", {"parameter": "n_parallel"}),
    ("srv        decode: failed to find free space in the KV cache, retrying with smaller batch size, off = 0, "
     "n_batch = 256, ret = 1", "kv_cache_full", {"cause": "space"}),
    ("update_slots: decode() failed: Context size has been exceeded.", "kv_cache_full", {"cause": "space"}),
    ("request (3024 tokens) exceeds the available context size (2048 tokens), try increasing it",
     "context_exceeded", {"n_prompt_tokens": "3024", "n_ctx_slot": "2048"}),
    ("the request exceeds the available context size. try increasing the context size or enable context shift",
     "context_exceeded", {}),
    ("Input prompt is too big compared to KV size. Please try increasing KV size.", "kv_cache_full", {}),
    ("slot update_slots: id  0 | task 0 | failed to process image, res = 1", "image_failed", {}),
    ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: cudaMalloc failed: "
     "out of memory", "oom_load", {"memory": "gpu", "alloc_mib": "4096.00", "device": "0"}),
    ("alloc_tensor_range: failed to allocate CUDA0 buffer of size 50331648", "oom_load",
     {"memory": "gpu", "buffer": "CUDA0"}),
    ("ggml_backend_metal_buffer_type_alloc_buffer: error: failed to allocate buffer, size = 1024.00 MiB",
     None, {}),  # says nothing specific alone: no kind
    ("ember-worker: llama.cpp failed to start: Failed to init server, please check the input params.",
     "startup_failed", {}),
    ("srv  log_server_r: request: POST /v1/chat/completions 127.0.0.1 200", None, {}),
    # remote OpenAI-compatible servers (vLLM's wording, real-shaped)
    ("This model's maximum context length is 2048 tokens. However, your request has 3000 input tokens. "
     "Please reduce the length of the input messages.", "context_exceeded",
     {"n_ctx_slot": "2048", "n_prompt_tokens": "3000"}),
    ("Invalid API Key", "auth_failed", {}),
]


@pytest.mark.parametrize("line,kind,facts", LINES)
def test_one_line(line, kind, facts):
    found = diagnose.classify_lines([line])
    if kind is None:
        assert not found or found[0].kind not in ("invalid_model", "port_in_use", "context_exceeded")
        return
    assert found and found[0].kind == kind
    for k, v in facts.items():
        assert found[0].facts[k] == v


# -- whole logs -> diagnoses with fixes ---------------------------------------------------------------

@pytest.mark.logfixture
def test_seed_image_failure(plans):
    plan = plans["mac"]
    err = client.EngineHTTPError(500, {"error": {"code": 500, "message": "failed to process image",
                                                 "type": "server_error"}})
    d = diagnose.diagnose_exception(err, plan=plan)
    assert d.kind == Kind.IMAGE_FAILED
    assert d.primary_fix.changes == {"n_ctx": 4096}
    assert "8,192" in d.explanation
    from_log = diagnose.diagnose_log(SEED_IMAGE, plan, phase="run")
    assert from_log.kind == Kind.IMAGE_FAILED


@pytest.mark.logfixture
def test_seed_kv_cache_full_on_metal(plans):
    plan = plans["mac"]
    err = client.EngineHTTPError(500, {"error": {"code": 500, "message": "Input prompt is too big compared to KV "
                                                 "size. Please try increasing KV size.", "type": "server_error"}})
    d = diagnose.diagnose_exception(err, plan=plan)
    assert d.kind == Kind.KV_CACHE_FULL
    changes = [f.changes for f in d.fixes]
    assert {"n_ctx": 4096} in changes               # lower n_ctx
    assert {"n_parallel": 4} in changes             # raise n_parallel ...
    raise_par = next(f for f in d.fixes if f.changes == {"n_parallel": 4})
    assert "does not help" in raise_par.note and "serial" in raise_par.note  # ... which does not help serial use
    fewer = next(f for f in d.fixes if "n_gpu_layers" in f.changes)
    assert 0 <= fewer.changes["n_gpu_layers"] < plan.fit.gpu_layers
    from_log = diagnose.diagnose_log(SEED_KV_FULL, plan, phase="run")
    assert from_log.kind == Kind.KV_CACHE_FULL and from_log.facts["cause"] == "memory"


@pytest.mark.logfixture
def test_cuda_out_of_memory_while_loading(plans, tmp_path):
    plan = plans["cuda"]
    log_path = tmp_path / "engine.log"
    log_path.write_text("# ember launch 2026-01-01 {}\n" + "\n".join(CUDA_OOM_LOAD) + "\n")
    exc = supervisor.EngineStartError("The llamacpp engine exited with status 2 while starting.",
                                      supervisor.ExitStatus(2), CUDA_OOM_LOAD[-3:], log_path)
    d = diagnose.diagnose_exception(exc, plan=plan)
    assert d.kind == Kind.OOM_LOAD
    assert d.facts["memory"] == "gpu" and d.facts["alloc_bytes"] == 48 * 1024 ** 2
    assert "the GPU's memory ran out" in d.explanation and "48 MiB" in d.explanation
    fewer = d.primary_fix
    assert "n_gpu_layers" in fewer.changes
    total = plan.fit.total_layers
    assert 0 < fewer.changes["n_gpu_layers"] < total
    keys = [k for f in d.fixes for k in f.changes]
    assert "n_ctx" in keys and "cache_type_k" in keys
    assert any(f.action == "choose_model" for f in d.fixes)  # a smaller quantization
    assert d.log_path == str(log_path) and d.log_tail[-1].startswith("ember-worker")


@pytest.mark.logfixture
def test_cuda_out_of_memory_for_kv_cache(plans):
    plan = launch.plan("starter", fake_cuda_pc(), overrides={"n_ctx": 131072})
    d = diagnose.diagnose_log(CUDA_OOM_KV, plan, phase="start")
    assert d.kind == Kind.OOM_LOAD and d.facts["alloc_bytes"] == 16 * GIB
    assert "KV cache" in d.explanation
    # the KV cache is bigger than the weights: a smaller context comes first
    assert d.primary_fix.changes["n_ctx"] <= 32768


@pytest.mark.logfixture
def test_warm_up_decode_failure_at_start_is_out_of_memory(plans):
    d = diagnose.diagnose_log(SEED_KV_FULL, plans["mac"], phase="start")
    assert d.kind == Kind.OOM_LOAD


def test_old_context_message_uses_the_plan_numbers(plans):
    err = client.EngineHTTPError(400, {"error": {"code": 400, "message": "the request exceeds the available context "
                                                 "size. try increasing the context size or enable context shift",
                                                 "type": "invalid_request_error"}})
    d = diagnose.diagnose_exception(err, plan=plans["mac"])
    assert d.kind == Kind.CONTEXT_EXCEEDED
    assert "each slot holds 4,096 tokens (n_ctx 8,192 / n_parallel 2)" in d.explanation
    assert any(f.changes.get("n_ctx") == 16384 for f in d.fixes)


def test_new_context_error_fields(plans):
    body = {"error": {"code": 400, "message": "request (3024 tokens) exceeds the available context size "
                      "(2048 tokens), try increasing it", "type": "exceed_context_size_error",
                      "n_prompt_tokens": 3024, "n_ctx": 2048}}
    d = diagnose.diagnose_exception(client.EngineHTTPError(400, body), plan=plans["cpu"])
    assert d.kind == Kind.CONTEXT_EXCEEDED
    assert "Your message needs 3,024 tokens; each slot holds 2,048 (n_ctx 2,048 / n_parallel 1)." in d.explanation
    assert d.facts["n_prompt_tokens"] == 3024 and d.facts["n_ctx_slot"] == 2048
    assert d.primary_fix.changes == {"n_ctx": 4096}
    assert d.fixes[-1].action == "new_conversation"


def test_prompt_longer_than_the_trained_context(plans):
    body = {"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 50000, "n_ctx": 2048, "message": "x"}}
    d = diagnose.diagnose_exception(client.EngineHTTPError(400, body), plan=plans["cpu"])
    assert "32,768" in d.explanation
    assert all(f.changes.get("n_ctx", 0) <= 32768 for f in d.fixes)
    assert d.primary_fix.action == "new_conversation" or d.primary_fix.changes == {"n_ctx": 32768}


def test_multimodal_note(plans):
    from dataclasses import replace
    plan = replace(plans["cpu"], model=replace(plans["cpu"].model, has_vision=True))
    body = {"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 3000, "n_ctx": 2048, "message": "x"}}
    d = diagnose.diagnose_exception(client.EngineHTTPError(400, body), plan=plan)
    assert "context shift is off" in d.explanation


def test_remote_context_error_without_a_plan():
    err = client.EngineHTTPError(400, {"object": "error", "message": "This model's maximum context length is 2048 "
                                       "tokens. However, your request has 3000 input tokens.",
                                       "type": "BadRequestError", "code": 400})
    d = diagnose.diagnose_exception(err)
    assert d.kind == Kind.CONTEXT_EXCEEDED
    # a server Ember did not start is not known to split its context into slots
    assert d.explanation.startswith("Your message needs 3,000 tokens; the context holds 2,048.")
    assert [f.action for f in d.fixes] == ["new_conversation"]  # no launch of ours to change


def test_auth_and_unreachable():
    d = diagnose.diagnose_exception(client.EngineHTTPError(401, {"error": {"message": "Invalid API Key",
                                                                           "type": "authentication_error"}}))
    assert d.kind == Kind.AUTH_FAILED and "API key" in d.explanation
    d = diagnose.diagnose_exception(client.StreamBroken("cannot connect to http://10.9.9.9:8000/v1: refused",
                                                         connect=True))
    assert d.kind == Kind.UNREACHABLE and "10.9.9.9" in d.explanation


def test_engine_missing_and_not_supported():
    d = diagnose.diagnose_exception(launch.PlanError("qwen-7b-awq", {"vllm": "not installed"}, "vllm",
                                                      "pip install vllm"))
    assert d.kind == Kind.ENGINE_MISSING and d.primary_fix.note == "pip install vllm"
    assert d.primary_fix.action == "install"
    d = diagnose.diagnose_exception(launch.PlanError("qwen-7b-awq", {"vllm": "needs a CUDA GPU; none found",
                                                                      "llamacpp": "runs GGUF files only"}))
    assert d.kind == Kind.NOT_SUPPORTED
    assert "vLLM: needs a CUDA GPU; none found" in d.explanation


def test_start_timeout_and_unknown_exception(tmp_path):
    exc = supervisor.EngineStartError("The llamacpp engine is running but did not answer within 60 s.", None,
                                      ["loading..."], tmp_path / "none.log", timed_out=True)
    d = diagnose.diagnose_exception(exc)
    assert d.kind == Kind.STARTUP_FAILED and "60 s" in d.explanation
    assert diagnose.diagnose_exception(KeyError("x")) is None


def test_crash_at_start_with_signal(tmp_path):
    log = tmp_path / "e.log"
    log.write_text("# ember launch x {}\nllama_model_load: loading\nGGML_ASSERT(n_tokens > 0) failed\n")
    exc = supervisor.EngineStartError("died", supervisor.ExitStatus(None, 6), [], log)
    d = diagnose.diagnose_exception(exc)
    assert d.kind == Kind.ENGINE_CRASHED
    assert d.facts["signal_name"] == "SIGABRT" and "GGML_ASSERT(n_tokens > 0) failed" in d.explanation


def test_reply_cut_short(plans):
    plan = launch.plan("starter", fake_cpu_box(), overrides={"n_ctx": 512, "n_parallel": 2})
    fin = client.Finished("length", client.Usage(30, 226), max_tokens=400)
    d = diagnose.diagnose_finish(fin, plan)
    assert d.kind == Kind.REPLY_CUT_SHORT
    assert "the message took 30 tokens and the answer 226" in d.explanation
    assert d.primary_fix.changes == {"n_ctx": 2048}
    # stopped at max_tokens as asked, or stopped normally: nothing to diagnose
    assert diagnose.diagnose_finish(client.Finished("length", client.Usage(30, 400), max_tokens=400), plan) is None
    assert diagnose.diagnose_finish(client.Finished("stop", client.Usage(30, 20), max_tokens=400), plan) is None


class FakeEngine(Transformers):
    """A vLLM-like engine registered under another name: its own log lines and fixes."""

    name = "fakeengine"
    label = "Fake engine"
    roles = Roles(context="max_model_len")

    def __init__(self, patterns, fixes=None):
        self.log_patterns = log_table(*patterns)
        self._fixes = fixes or (lambda kind, facts, plan: [])

    def fixes_for(self, kind, facts, plan):
        return self._fixes(kind, facts, plan)


@pytest.fixture
def register_fake():
    """register_fake(engine): the engine is in the registry for this test only."""
    names = []

    def register(engine):
        backends.register(engine)
        names.append(engine.name)
        return engine

    yield register
    for name in names:
        backends.unregister(name)


def test_backend_log_patterns_are_consulted(register_fake):
    register_fake(FakeEngine([(r"torch\.OutOfMemoryError: CUDA out of memory. Tried to allocate "
                               r"(?P<alloc_mib>[\d.]+) MiB", "oom_load", {"memory": "gpu"})]))
    line = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity"
    m = diagnose.best_match([line], "fakeengine")
    assert m.kind == "oom_load" and m.facts == {"memory": "gpu", "alloc_mib": "20.00"}
    assert diagnose.best_match(["nothing to see"], "fakeengine") is None


def test_render_text_and_json(plans):
    body = {"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 3024, "n_ctx": 2048, "message": "m"}}
    d = diagnose.diagnose_exception(client.EngineHTTPError(400, body), plan=plans["cpu"])
    text = d.render_text()
    assert text.startswith("Error: The conversation is longer than the engine's context")
    assert "--set n_ctx=4096" in text
    data = json.loads(json.dumps(d.to_dict()))
    assert data["kind"] == "context_exceeded" and data["fixes"][0]["changes"] == {"n_ctx": 4096}


def test_preflight_warns_before_launch(starter_path):
    plan = launch.plan("starter", fake_cpu_box(), overrides={"n_ctx": 10_000_000})
    assert any("more than this computer has" in w for w in plan.warnings)
    d = diagnose.preflight(plan)
    assert d.kind == Kind.OOM_LOAD and d.primary_fix.changes == {"n_ctx": 32768}
    assert diagnose.preflight(launch.plan("starter", fake_cpu_box(), overrides={"n_ctx": 2048})) is None


def test_slot_context_as_llama_cpp_really_sets_it():
    """n_ctx 256 with n_parallel 2: llama.cpp rounds the total up to 512 (256 per slot), seen on this build."""
    plan = launch.plan("starter", fake_cpu_box(), overrides={"n_ctx": 256, "n_parallel": 2})
    fin = client.Finished("length", client.Usage(35, 221), max_tokens=400)
    d = diagnose.diagnose_finish(fin, plan)
    assert d.facts["n_ctx_slot"] == 256
    assert "filling the slot's 256 tokens (n_ctx 512 / n_parallel 2; llama.cpp changed the n_ctx 256 you set)" \
        in d.explanation


def test_other_engines_get_their_own_fixes(register_fake):
    """A vLLM-like backend: its log patterns classify, its fixes_for gives the parameter fixes in its own keys;
    llama.cpp's keys (n_ctx, cache_type_k...) are never offered to it."""
    register_fake(FakeEngine([(r"No available memory for the cache blocks", "oom_load", {"memory": "gpu"})],
                             lambda kind, facts, plan: ([Fix("Lower the context to 2,048 tokens",
                                                             {"max_model_len": 2048}, "n")]
                                                        if kind == "oom_load" else [])))
    model = types.SimpleNamespace(context_length=8192, path=None, format="pytorch", has_vision=False,
                                  block_count=28, quantization="none")
    plan = types.SimpleNamespace(engine="fakeengine", params={"max_model_len": 4096}, model=model,
                                 hardware=fake_cuda_pc(), fit=None)
    d = diagnose.diagnose_log(["ValueError: No available memory for the cache blocks. Try increasing "
                                "`gpu_memory_utilization`"], plan, "start")
    assert d.kind == Kind.OOM_LOAD
    assert d.primary_fix.changes == {"max_model_len": 2048}
    keys = {k for f in d.fixes for k in f.changes}
    assert keys == {"max_model_len"}
    body = {"error": {"message": "This model's maximum context length is 4096 tokens. However, your request has "
                                 "5000 input tokens.", "type": "BadRequestError"}}
    d = diagnose.diagnose_exception(client.EngineHTTPError(400, body), plan=plan)
    assert d.kind == Kind.CONTEXT_EXCEEDED and "(context length 4,096)" in d.explanation
    assert [f.action for f in d.fixes] == ["new_conversation"]
