"""vLLM and SGLang for real, wherever a CUDA GPU and the engine are present (skipped elsewhere).

The model is the starter from PyPI (Gemma 3 270M) converted to safetensors, the
same folder the CPU tests use (cached in .cache/test). Each engine is started
through Ember's launch path, answers a chat, and is then started again with a
memory setting too small for it, whose failure must be diagnosed as
out-of-memory with a fix in the engine's own parameters.

An engine installed in its own environment is found through the usual setting
(``engine_python.vllm`` / ``engine_python.sglang``) or, for CI, the variables
``EMBER_VLLM_PYTHON`` / ``EMBER_SGLANG_PYTHON``.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from engines.machine import hardware
from engines.running import launch
from engines.running import supervisor
from engines.diagnosis.evidence import first_match
from engines.running import backends
from engines.running.backends import availability
from engines.chat.client import ChatStream, Delta

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

#: A plain template: the starter is a base model without one, and vLLM/SGLang want one for chat.
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def hw():
    profile = hardware.detect()
    if not profile.has_cuda:
        pytest.skip("no CUDA GPU here")
    return profile


@pytest.fixture(scope="module")
def folder(hw, starter_path, tmp_path_factory):
    path = ROOT / "tests" / "fixtures" / "safetensors_model.py"
    spec = importlib.util.spec_from_file_location("ember_test_safetensors_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ensure(starter_path)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("template") / "plain.jinja"
    p.write_text(TEMPLATE)
    return str(p)


def need(engine: str):
    a = availability(engine)
    if not a.installed:
        pytest.skip(f"{engine} is not installed ({a.problem or a.install_command})")


@pytest.mark.parametrize("engine,params", [
    ("vllm", ["gpu_memory_utilization=0.3", "max_model_len=2048", "enforce_eager=true"]),
    ("sglang", ["mem_fraction_static=0.3", "context_length=2048", "disable_cuda_graph=true"]),
])
def test_serves_and_answers(engine, params, hw, folder, template):
    need(engine)
    plan = launch.plan(str(folder), hw, engine, params + [f"chat_template={template}"])
    started = time.monotonic()
    proc = launch.start(plan, timeout=600)
    try:
        print(f"\n{engine}: ready in {time.monotonic() - started:.1f} s")
        events = list(ChatStream(proc.base_url, [{"role": "user", "content": "Say hello."}], proc.api_key,
                                 model=plan.model.name, max_tokens=16, temperature=0))
        assert "".join(e.text for e in events if isinstance(e, Delta)).strip()
    finally:
        proc.stop()


@pytest.mark.parametrize("engine,params", [
    ("vllm", ["gpu_memory_utilization=0.01", "max_model_len=32768", "enforce_eager=true"]),
    ("sglang", ["mem_fraction_static=0.01", "context_length=32768", "disable_cuda_graph=true"]),
])
def test_provoked_out_of_memory_is_diagnosed(engine, params, hw, folder, template):
    need(engine)
    plan = launch.plan(str(folder), hw, engine, params + [f"chat_template={template}"])
    with pytest.raises(supervisor.EngineStartError) as err:
        launch.start(plan, timeout=600)
    lines = err.value.log_path.read_text(errors="replace").splitlines()
    chosen = backends.get(engine)
    m = first_match(chosen.log_patterns, lines)
    assert m is not None and m.kind == "oom_load", "\n".join(lines[-30:])
    assert chosen.fixes_for(m.kind, m.facts, plan)
    from engines.diagnosis import diagnose
    assert diagnose.diagnose_exception(err.value, plan=plan).kind == "oom_load"
