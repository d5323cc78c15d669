"""transformers and MLX for real, on this CPU, with the starter model converted to safetensors.

One engine start per engine for the module's tests (the conversion is cached in
.cache/test). The CLI tests run the real ``ember chat`` as a subprocess. The last
test of each engine kills its server mid-answer and checks the diagnose.
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from engines.running import launch
from engines.running import supervisor
from engines.chat import completion_mode
from engines.chat.client import ChatStream, Delta, EngineHTTPError, Finished, StreamBroken

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ["transformers", "mlx"]


def _fixture_module():
    path = ROOT / "tests" / "fixtures" / "safetensors_model.py"
    spec = importlib.util.spec_from_file_location("ember_test_safetensors_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def safetensors_folder(starter_path) -> Path:
    return _fixture_module().ensure(starter_path)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request, safetensors_folder):
    plan = launch.plan(str(safetensors_folder), engine=request.param)
    started = time.monotonic()
    proc = launch.start(plan, timeout=240)
    print(f"\n{request.param}: ready in {time.monotonic() - started:.1f} s")
    yield plan, proc
    proc.stop()


def _chat(proc, text: str, **options) -> tuple[str, Finished]:
    events = list(ChatStream(proc.base_url, [{"role": "user", "content": text}], proc.api_key, **options))
    return "".join(e.text for e in events if isinstance(e, Delta)), events[-1]


def test_streams_an_answer(engine):
    plan, proc = engine
    text, fin = _chat(proc, "Write one sentence about the sea.", max_tokens=12, temperature=0)
    assert text.strip()
    assert isinstance(fin, Finished) and fin.finish_reason in ("length", "stop")
    assert fin.usage.completion_tokens and fin.usage.completion_tokens <= 12
    print(f"{plan.engine}: {fin.usage.completion_tokens} tokens at {fin.tokens_per_second or 0:.1f} tokens/s")


def test_two_requests_at_once_both_answer(engine):
    """The tray's chat and a script may ask at the same moment."""
    from concurrent.futures import ThreadPoolExecutor
    plan, proc = engine
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda q: _chat(proc, q, max_tokens=4, temperature=0), ["Hello", "Bonjour"]))
    for text, fin in results:
        assert text.strip() and fin.finish_reason in ("length", "stop")


def test_wrong_key_is_refused_and_diagnosed(engine):
    plan, proc = engine  # mlx_lm.server has no key of its own: Ember's bootstrap adds the check
    with pytest.raises(EngineHTTPError) as err:
        list(ChatStream(proc.base_url, [{"role": "user", "content": "hi"}], "wrong-key", max_tokens=2))
    assert err.value.status == 401
    assert httpx.get(proc.base_url + "/models", timeout=10).status_code == 401  # no key: nothing answered
    from engines.diagnosis import diagnose
    assert diagnose.diagnose_exception(err.value, proc, plan).kind == "auth_failed"


def test_prompt_longer_than_the_context_is_diagnosed(engine):
    plan, proc = engine
    if plan.engine == "mlx":
        pytest.skip("mlx_lm.server has no context limit of its own")
    with pytest.raises(EngineHTTPError) as err:
        _chat(proc, "word " * 5000, max_tokens=4)
    assert err.value.status == 400 and err.value.type == "exceed_context_size_error"
    assert err.value.fields["n_ctx"] == plan.params["max_model_len"] == 4096
    from engines.diagnosis import diagnose
    d = diagnose.diagnose_exception(err.value, proc, plan)
    assert d.kind == "context_exceeded"


def test_cancel_stops_the_generation(engine):
    """Stop in the chat window: the engine stops generating for the request that went away."""
    plan, proc = engine
    offset = proc.log_size()
    stream = ChatStream(proc.base_url, [{"role": "user", "content": "Count to one hundred."}], proc.api_key,
                        max_tokens=300, temperature=0)
    for ev in stream:
        if isinstance(ev, Delta) and ev.text.strip():
            stream.cancel()
    assert isinstance(ev, Finished) and ev.cancelled
    text, fin = _chat(proc, "Hello", max_tokens=4, temperature=0)  # the engine is free again
    assert fin.finish_reason in ("length", "stop")
    if plan.engine == "transformers":  # our server says how far the cancelled one got
        log = "\n".join(proc.log_lines(offset))
        m = re.search(r"generation cancelled after (\d+) of at most 300 tokens", log)
        assert m and int(m.group(1)) < 300, log


def test_the_served_name_is_the_only_model_id(engine):
    """The id `ember serve` prints is what /v1/models lists and every answer names; never a path."""
    plan, proc = engine
    headers = {"Authorization": f"Bearer {proc.api_key}"}
    listed = httpx.get(proc.base_url + "/models", headers=headers, timeout=30).json()["data"]
    assert [m["id"] for m in listed] == [plan.model.name]
    text, fin = _chat(proc, "Hello", max_tokens=3, temperature=0, model=plan.model.name)
    assert fin.model == plan.model.name
    text, fin = _chat(proc, "Hello", max_tokens=3, temperature=0)  # no name: the loaded model
    assert fin.model == plan.model.name and "/" not in fin.model
    with pytest.raises(EngineHTTPError) as err:
        _chat(proc, "Hello", max_tokens=3, model="gpt-4o")
    assert err.value.status == 404 and err.value.fields["served_models"] == [plan.model.name]
    assert f"this server serves '{plan.model.name}'" in err.value.error_message


def test_completion_mode_continues_text(engine):
    """A model without a chat template runs through /v1/completions, named by its served id."""
    plan, proc = engine
    messages = [{"role": "user", "content": "The capital of France is"}]
    stream = ChatStream(proc.base_url, messages, proc.api_key, max_tokens=8, temperature=0,
                        completion=completion_mode.completion_request(messages))
    events = list(stream)
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert text.strip() and isinstance(events[-1], Finished)
    assert events[-1].finish_reason in ("length", "stop") and events[-1].model == plan.model.name


@pytest.mark.parametrize("name", ENGINES)
def test_cli_chat_answers(name, safetensors_folder):
    out = subprocess.run([sys.executable, "-m", "engines.cli", "chat", str(safetensors_folder), "--engine", name,
                          "--max-tokens", "8", "--temperature", "0", "The capital of France is"],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    if name == "mlx":
        assert "MLX runs on the CPU here, slowly" in out.stderr


@pytest.mark.parametrize("name", ENGINES)
def test_a_broken_weights_file_fails_the_start_with_a_diagnosis(name, safetensors_folder, tmp_path):
    """A damaged download must fail at start, quickly, not hang until the start timeout."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in safetensors_folder.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    plan = launch.plan(str(broken), engine=name)
    with pytest.raises(supervisor.EngineStartError) as err:
        launch.start(plan, timeout=120)
    assert not err.value.timed_out and err.value.status is not None
    from engines.diagnosis import diagnose
    d = diagnose.diagnose_exception(err.value, plan=plan)
    assert d.kind == "invalid_model", d.render_text()


def test_killed_mid_stream_is_diagnosed_as_a_crash(engine):
    """Last for each engine: it kills the shared server."""
    plan, proc = engine
    server = psutil.Process(proc.pid).children()[0]  # the engine's own server, under our worker
    stream = ChatStream(proc.base_url, [{"role": "user", "content": "Tell me a long story."}], proc.api_key,
                        max_tokens=400, temperature=0)
    got = ""
    with pytest.raises(StreamBroken) as err:
        for ev in stream:
            if isinstance(ev, Delta):
                got += ev.text
                if got.strip():
                    os.kill(server.pid, signal.SIGKILL)
    assert got.strip()
    from engines.diagnosis import diagnose
    d = diagnose.diagnose_exception(err.value, proc, plan)
    assert d.kind == "engine_crashed", d.render_text()
    assert d.fixes and d.fixes[0].action == "relaunch"
