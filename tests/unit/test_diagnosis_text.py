"""``ember diagnose``: a log read with no launch behind it, Ember's own or pasted from elsewhere.

What a user sees: the kind and words of the failure, when it happened (loading or
answering, read from the log), fixes in the engine's own keys that the engine
accepts, nothing at all for a healthy log, and engine messages that name
llama-server flags said the Ember way. The log lines are real ones from
``tests/fixtures/wild_logs`` (their sources are there).
"""
from __future__ import annotations

import io
import json
import sys

import pytest

from engines import actions, cli
from engines.chat import client
from engines.diagnosis import diagnose
from engines.diagnosis.types import Kind
from engines.machine.hardware import GPU, HardwareProfile
from engines.running import backends, launch
from engines.running.backends import terms

GIB = 1024 ** 3

# mlx_lm.server, https://github.com/ml-explore/mlx-lm/issues/854 and https://github.com/ddalcu/mlx-serve/issues/44
METAL_OOM = ("libc++abi: terminating due to uncaught exception of type std::runtime_error: [METAL] Command buffer "
             "execution failed: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)")
SERVING = '127.0.0.1 - - [07/Feb/2026 01:28:11] "POST /v1/chat/completions HTTP/1.1" 200 -'
LOADING = "Batch eval all weights: 15300ms"
# llama-cpp-python on a T4 with an old driver, https://github.com/abetlen/llama-cpp-python/issues/1436
DRIVER = ("CUDA error 35 at /home/conda/feedstock_root/build_artifacts/llama.cpp_1703017359354/work/ggml-cuda.cu:493: "
          "CUDA driver version is insufficient for CUDA runtime version")
# torch asked for CUDA in a CPU-only build, https://github.com/agiresearch/AIOS/issues/14
CPU_TORCH = "AssertionError: Torch not compiled with CUDA enabled"
# https://github.com/unslothai/unsloth/issues/8535
EMBEDDINGS = "This server does not support embeddings. Start it with `--embeddings`"
# SGLang, https://github.com/sgl-project/sglang-jax/issues/622
SGLANG_POOL = """[2026-01-05 06:12:41] Prefill batch. #new-seq: 1, #new-token: 1024, #cached-token: 0, token usage: 0.98, #running-req: 167, #queue-req: 88, 
[2026-01-05 06:12:41] Decode out of memory. Try to lower your batch size.
Try to allocate 168 tokens."""
# torch's allocator, https://github.com/vllm-project/vllm/issues/2140
TORCH_OOM = ("torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 518.00 MiB. GPU 0 has a total "
             "capacty of 21.67 GiB of which 4.06 MiB is free.")


def fake_cuda_pc() -> HardwareProfile:
    return HardwareProfile("linux", "x86_64", 16, 64 * GIB, 58 * GIB,
                           [GPU("NVIDIA GeForce RTX 4090 (fake)", "nvidia", "cuda", 24 * GIB, 22 * GIB, "CUDA0")],
                           "fake CPU", False, "cuda")


def accepted(engine: str, d) -> None:
    """Every parameter fix is one the engine itself takes."""
    e = backends.get(engine)
    for f in d.fixes:
        if f.changes:
            assert e.validate(f.changes) == f.changes, f


# -- when it failed, read from the log ----------------------------------------------------------------------

def test_the_same_memory_failure_while_answering_is_the_kv_cache_and_while_loading_the_load():
    answering = diagnose.diagnose_text("\n".join([SERVING, METAL_OOM]))
    loading = diagnose.diagnose_text("\n".join([LOADING, METAL_OOM]))
    assert answering.kind == Kind.KV_CACHE_FULL and answering.facts["phase"] == "run"
    assert "while answering" in answering.explanation
    assert loading.kind == Kind.OOM_LOAD and loading.facts["phase"] == "start"
    assert loading.title == "Not enough memory to load the model"


def test_a_kv_pool_exhausted_while_serving_is_not_taken_for_a_load_failure():
    d = diagnose.diagnose_text(SGLANG_POOL)
    assert d.kind == Kind.KV_CACHE_FULL and d.facts["engine"] == "sglang"
    keys = {k for f in d.fixes for k in f.changes}
    assert keys & {"mem_fraction_static", "max_running_requests"}
    accepted("sglang", d)


def test_a_process_the_shell_reports_killed_is_a_crash_with_the_memory_hint():
    d = diagnose.diagnose_text("DEBUG    generation tokens: 229, tps: 20.81387492239415\nzsh: killed     mlx-omni-server")
    assert d.kind == Kind.ENGINE_CRASHED
    assert "out-of-memory killer" in d.explanation


def test_a_healthy_log_is_nothing_to_diagnose():
    assert diagnose.diagnose_text("main: model loaded\nmain: server is listening on http://127.0.0.1:8030\n"
                                  "srv  update_slots: all slots are idle") is None


# -- whose log it is -------------------------------------------------------------------------------------

def test_ember_s_own_log_names_its_engine_and_the_fixes_are_in_its_keys():
    header = '# ember launch 2026-01-01T00:00:00 {"model": "m", "engine": "%s", "port": 1, "command": "", "meta": {}}'
    vllm = diagnose.diagnose_text("\n".join([header % "vllm", TORCH_OOM]))
    transformers = diagnose.diagnose_text("\n".join([header % "transformers", TORCH_OOM]))
    assert vllm.facts["engine"] == "vllm" and transformers.facts["engine"] == "transformers"
    assert {k for f in vllm.fixes for k in f.changes} <= set(backends.get("vllm").schema())
    assert "device" in {k for f in transformers.fixes for k in f.changes}  # run on the CPU
    accepted("vllm", vllm)
    accepted("transformers", transformers)


def test_the_engine_given_wins_over_the_one_guessed():
    guessed = diagnose.diagnose_text(TORCH_OOM)
    given = diagnose.diagnose_text(TORCH_OOM, "transformers")
    assert given.facts["engine"] == "transformers" and guessed.facts["engine"] != "transformers"


# -- a GPU that is there but cannot be used --------------------------------------------------------------

def test_a_driver_older_than_the_build_says_so_and_offers_the_driver_the_cpu_and_the_right_build():
    d = diagnose.diagnose_text(DRIVER)
    assert d.kind == Kind.GPU_UNUSABLE and d.facts["problem"] == "driver_too_old"
    assert d.title == "The GPU is there, but the engine cannot use it"
    assert d.fixes[0].label == "Update the NVIDIA driver"
    assert any(f.changes == {"n_gpu_layers": 0} for f in d.fixes)
    install = [f for f in d.fixes if f.action == "install"]
    assert install and install[0].note == backends.get("llamacpp").gpu_install
    accepted("llamacpp", d)


def test_a_cpu_only_torch_build_offers_the_gpu_build_and_the_cpu():
    d = diagnose.diagnose_text(CPU_TORCH, "transformers")
    assert d.kind == Kind.GPU_UNUSABLE and d.facts["problem"] == "cpu_build"
    assert d.fixes[0].action == "install" and "download.pytorch.org" in d.fixes[0].note
    assert any(f.changes == {"device": "cpu"} for f in d.fixes)


def test_the_driver_s_cuda_version_is_read_from_torch_s_words():
    d = diagnose.diagnose_text("UserWarning: CUDA initialization: The NVIDIA driver on your system is too old "
                               "(found version 11040). Please update your GPU driver", "vllm")
    assert d.facts["driver_cuda"] == "11.4" and "CUDA 11.4" in d.explanation


def test_running_on_the_cpu_is_not_offered_when_the_launch_already_did(starter_path):
    plan = launch.plan("starter", fake_cuda_pc(), overrides={"n_gpu_layers": 0})
    d = diagnose.diagnose_log([DRIVER], plan, phase="start")
    assert d.kind == Kind.GPU_UNUSABLE
    assert not any(f.changes.get("n_gpu_layers") == 0 for f in d.fixes)


# -- engine messages in Ember's terms ----------------------------------------------------------------------

def test_the_translation_table_names_only_keys_llama_cpp_takes():
    engine = backends.get("llamacpp")
    for feature, changes in terms.FEATURES.items():
        assert engine.validate(changes) == changes, feature
    for term in terms.TERMS:
        assert "--set" in term.ember and "`--" not in term.ember.replace("`--set", "")


def test_an_embeddings_request_to_an_engine_started_without_them(starter_path):
    plan = launch.plan("starter", fake_cuda_pc())
    err = client.EngineHTTPError(501, {"error": {"code": 501, "message": EMBEDDINGS, "type": "not_supported_error"}})
    d = diagnose.diagnose_exception(err, plan=plan)
    assert d.kind == Kind.NOT_SUPPORTED
    assert d.fixes[0].changes == {"embedding": True, "pooling_type": "mean"}
    assert "--set embedding=true --set pooling_type=mean" in d.explanation
    assert "Start it with `--embeddings`" not in d.explanation + json.dumps(d.facts)


def test_a_remote_server_keeps_its_own_words():
    err = client.EngineHTTPError(501, {"error": {"code": 501, "message": EMBEDDINGS, "type": "not_supported_error"}})
    d = diagnose.diagnose_exception(err)  # a server Ember did not start: its own flags are right for it
    assert "Start it with `--embeddings`" in d.explanation


@pytest.mark.parametrize("engine,key", [("llamacpp", "n_ctx"), ("transformers", "max_model_len")])
def test_try_increasing_it_becomes_the_setting_that_holds_the_request(engine, key):
    said = backends.get(engine).in_ember_terms(
        "request (3024 tokens) exceeds the available context size (2048 tokens), try increasing it")
    assert "try increasing it" not in said
    assert f"--set {key}=4096" in said and "the launch dialog's Context size field" in said


def test_metrics_and_context_shift_in_ember_s_terms():
    e = backends.get("llamacpp")
    assert "--set endpoint_metrics=true" in e.in_ember_terms(
        "This server does not support metrics endpoint. Start it with `--metrics`")
    said = e.in_ember_terms("the request exceeds the available context size. try increasing the context size or "
                            "enable context shift")
    assert "--set ctx_shift=true" in said and "--set n_ctx=" in said
    said = e.in_ember_terms("failed to load model 'm.gguf', try reducing --n-gpu-layers if you're running out of VRAM")
    assert "--n-gpu-layers" not in said and "--set n_gpu_layers=" in said


def test_a_pasted_context_error_names_the_size_the_fix_sets():
    d = diagnose.diagnose_text("slot update_slots: id  0 | task 2017 | new prompt, n_ctx_slot = 2048, n_keep = 0, "
                               "n_prompt_tokens = 2059\nsrv    send_error: task id = 2017, error: the request exceeds "
                               "the available context size. try increasing the context size or enable context shift")
    assert d.kind == Kind.CONTEXT_EXCEEDED and d.facts["n_prompt_tokens"] == 2059
    fix = next(f for f in d.fixes if f.changes)
    assert f"--set n_ctx={fix.changes['n_ctx']}" in d.facts["log_line"]


# -- the command --------------------------------------------------------------------------------------------

def run(argv, stdin: str | None = None, monkeypatch=None, capsys=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ember_diagnose_prints_the_diagnosis_as_ember_chat_does(tmp_path, capsys, monkeypatch):
    log = tmp_path / "engine.log"
    log.write_text("llama_model_load: error loading model: error loading model architecture: unknown model "
                   "architecture: 'llama4'\nllama_model_load_from_file_impl: failed to load model\n")
    code, out, _ = run(["diagnose", str(log)], capsys=capsys, monkeypatch=monkeypatch)
    d = diagnose.diagnose_text(log.read_text(), path=str(log))
    assert code == 0 and out.strip() == actions.render_text(d, actions.Situation(log_path=str(log)), tail=0)
    assert out.startswith("Error: ") and "'llama4'" in out and "What you can do:" in out
    assert "     $ ember models --fits" in out  # each fix with the command that does it


def test_ember_diagnose_json(tmp_path, capsys, monkeypatch):
    log = tmp_path / "vllm.log"
    log.write_text("ERROR 05-08 21:27:27 [serving_chat.py:198] ValueError: This model's maximum context length is "
                   "8192 tokens. However, you requested 8203 tokens (7691 in the messages, 512 in the completion).\n")
    code, out, _ = run(["diagnose", str(log), "--json"], capsys=capsys, monkeypatch=monkeypatch)
    data = json.loads(out)
    assert code == 0 and {"kind", "title", "explanation", "facts", "fixes"} <= set(data)
    assert data["kind"] == "context_exceeded" and data["facts"]["engine"] == "vllm"
    assert any(f["changes"].get("max_model_len") for f in data["fixes"])


def test_ember_diagnose_reads_a_pasted_log_from_stdin(capsys, monkeypatch):
    code, out, _ = run(["diagnose", "-", "--engine", "transformers"], stdin=CPU_TORCH + "\n",
                       capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0 and "The GPU is there, but the engine cannot use it" in out


def test_ember_diagnose_says_when_it_recognises_nothing(tmp_path, capsys, monkeypatch):
    log = tmp_path / "fine.log"
    log.write_text("INFO:     Application startup complete.\n")
    code, out, err = run(["diagnose", str(log)], capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1 and out == "" and "nothing recognised" in err
    code, _, err = run(["diagnose", str(tmp_path / "missing.log")], capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1 and "cannot read" in err
