"""Issue 12 (5): values that crash an engine, or take Ember's control of it away, are refused before
anything starts, with the valid range or the reason, and the nearest valid value as the fix."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engines.diagnosis import diagnose
from engines.running import backends
from engines.running import params as P
from tests.helpers import ROOT


@pytest.mark.parametrize("pair,nearest,words", [
    ("n_ctx=1", 256, "256"),                            # measured: llama.cpp aborts (get_sub_batch) at 1
    ("n_ctx=99999999999", 0, "wraps around"),          # int32 overflow aborts llama.cpp; 0 = the model's own
    ("n_batch=5000000000", 2**31 - 1, "wrap around"),  # any whole number llama.cpp takes is a C int
    ("n_gpu_layers=-2", -1, "-1 (auto)"),
])
def test_whole_numbers_outside_what_llamacpp_survives_are_refused_with_the_nearest(pair, nearest, words):
    with pytest.raises(P.ParamError) as err:
        P.validate([pair])
    assert err.value.nearest == nearest and words in str(err.value)
    d = diagnose.diagnose_exception(err.value)
    assert d.kind == "bad_parameter" and d.fixes[0].changes == {pair.split("=")[0]: nearest}


@pytest.mark.parametrize("pair", ["n_ctx=0", "n_ctx=256", "n_ctx=131072", "n_gpu_layers=-1", "n_batch=2048"])
def test_values_inside_the_limits_pass(pair):
    key, value = pair.split("=")
    assert P.validate([pair]) == {key: int(value)}


@pytest.mark.parametrize("engine,pair", [("llamacpp", "sampling.temp=nan"), ("llamacpp", "sampling.top_p=inf"),
                                         ("transformers", "temperature=nan"), ("vllm", "gpu_memory_utilization=nan"),
                                         ("mlx", "temperature=-inf")])
def test_nan_and_infinity_are_refused_for_every_engine(engine, pair):
    with pytest.raises(P.ParamError) as err:
        backends.get(engine).validate([pair])
    assert "finite number" in str(err.value)


@pytest.mark.parametrize("key", ["api_prefix", "port", "hostnames", "api_keys", "ssl_file_key", "reuse_port"])
def test_keys_that_take_control_of_the_engine_away_are_refused_with_the_reason(key):
    with pytest.raises(P.ParamError) as err:
        P.validate([f"{key}=x"])
    assert "cannot be set" in str(err.value) and len(str(err.value)) > len(key) + 20


def test_the_command_line_refuses_before_any_engine_starts(fresh_home):
    logs = fresh_home / "logs" / "engines"
    for args in (["--set", "n_ctx=1"], ["--set", "n_ctx=99999999999"], ["--set", "api_prefix=/foo"],
                 ["--set", "sampling.temp=nan"]):
        out = subprocess.run([sys.executable, "-m", "engines.cli", "chat", "starter", *args, "Hi"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert args[1].split("=")[0] in out.stderr
    out = subprocess.run([sys.executable, "-m", "engines.cli", "chat", "starter", "--temperature", "nan", "Hi"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "from 0 to 2" in out.stderr
    assert not logs.exists() or not list(logs.iterdir())  # no engine was started
