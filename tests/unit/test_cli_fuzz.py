"""Issue 14, point 8: property-based tests (Hypothesis) of the command line.

Three properties, each over generated input:

- command lines as each command's parser expects them, with right and wrong names, URLs, numbers
  and files (and now and then a junk word anywhere) end with an exit status and words for people,
  never a traceback and never the "unexpected error" of the CLI's last line of defence;
- ``ember chat starter --set KEY=VALUE``: a value llama.cpp cannot take (the wrong type, outside the
  ranges the FACTS measured, NaN, or one its own field cannot hold: the real ``CommonParams`` setter
  is the judge) never starts an engine;
- hardware profiles, near-valid and random JSON: accepted or refused naming the field, and one that
  claims negative or impossible memory is never accepted.

The engine start (``launch.start``) is replaced by a recorder that notes the plan and fails as an
engine that cannot start would, so a start that does happen ends in its diagnosis; no network is
asked (offline mode; a remote's model list fails at once). ``ember serve`` is left out: with a
valid plan it serves until stopped (its ``--port`` is checked in test_cli_refusals). Examples are
derandomized so the suite is repeatable; ``EMBER_FUZZ_EXAMPLES=N`` runs N random ones instead.
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines import cli, paths, secrets
from engines.chat import client, remotes
from engines.running import launch, supervisor
from engines.running import params as P

EXAMPLES = int(os.environ.get("EMBER_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 40, deadline=None, database=None, derandomize=not EXAMPLES,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


class Recorder:
    """Stands in for ``launch.start``: records the plan, then fails as an engine that could not start would."""

    def __init__(self):
        self.started: list = []

    def start(self, plan, *a, **kw):
        self.started.append(plan)
        raise supervisor.EngineStartError("The stand-in engine of the fuzz test does not start.", None, [],
                                          Path(os.devnull))


@pytest.fixture
def ember(fresh_home, monkeypatch, capsys):
    """Run the CLI in-process: (exit status, stdout, stderr, plans started)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("EMBER_TEST_KEY", raising=False)

    def no_server(*a, **kw):
        raise client.StreamBroken("cannot connect (the fuzz test asks no server)", connect=True)

    monkeypatch.setattr(remotes, "list_models", no_server)
    monkeypatch.setattr(secrets, "keyring_available", lambda: False)  # never a fuzzed secret in the real keyring
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-a-key-on-stdin\n"))  # --key-stdin reads it; not a terminal

    def run(argv: list[str]):
        rec = Recorder()
        sys.stdin.seek(0)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(launch, "start", rec.start)
            try:
                code = cli.main(list(argv))
            except SystemExit as exc:  # argparse: --help (0) or a refusal with the usage (2)
                code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err, rec.started

    return run


def _no_traceback(code, out: str, err: str) -> None:
    assert isinstance(code, int), f"exit status {code!r}"
    for text in (out, err):
        assert "Traceback" not in text, text
        assert "unexpected error" not in text, text  # the last line of defence caught a bug


# -- 1. any command line ------------------------------------------------------------------------------

WORDS = ["doctor", "models", "chat", "pull", "params", "diagnose", "engine-python", "remote", "add", "list",
         "remove", "starter", "vllm", "sglang", "mlx", "transformers", "llamacpp", "lab", "qwen3-0.6b-q4_k_m",
         "--json", "--fits", "--engine", "--set", "--max-tokens", "--temperature", "--system", "-q", "--quiet",
         "--hardware", "--key-env", "--key-stdin", "--no-check", "--replace", "--model", "--reset", "-v",
         "n_ctx=0", "n_ctx=-5", "n_parallel=0", "sampling.temp=nan", "=", "-", "--", "http://127.0.0.1:1",
         "http://[::1", "ftp://x", "http://h:99999", "EMBER_TEST_KEY", "/nonexistent/file.gguf", ".", "",
         "owner/repo:file.gguf", "../..", "-1", "0", "1e999", "nan", "99999999999999999999"]
TOKEN = st.one_of(st.sampled_from(WORDS), st.text(max_size=12), st.integers().map(str))


JUNK_FILES = {"@list": "[1,2,3]", "@null": "null", "@empty": "", "@object": "{}", "@binary": "\x00\xff\xfe",
              "@negative": json.dumps({"os": "linux", "arch": "x86_64", "cpu_cores": 2, "ram_total_bytes": -1,
                                       "ram_available_bytes": -1, "gpus": []})}


def mostly(words: list[str], junk: st.SearchStrategy) -> st.SearchStrategy:
    """One of ``words`` three times in four, else ``junk``."""
    known = st.sampled_from(words)
    return st.one_of(known, known, known, junk)


NAMES = mostly(["lab", "gone", "gone", "starter", "x", "../x", "a" * 70, "qwen3-0.6b-q4_k_m", "owner/repo:file.gguf",
                "/nonexistent/model.gguf"], st.text(max_size=8))
URLS = mostly(["http://127.0.0.1:9", "http://127.0.0.1:99999", "http://h:0", "ftp://x", "http://", "http://[::1",
               "127.0.0.1:9", "https://example.invalid/v1"], st.text(max_size=10))
NUMBERS = mostly(["-1", "0", "1", "1e12", "nan", "inf", "99999", "2.5", "", "x"], st.integers().map(str))
FILES = mostly(sorted(JUNK_FILES), st.text(max_size=8))
OPTION_VALUES = {
    "--hardware": FILES, "--set": TOKEN, "--max-tokens": NUMBERS, "--temperature": NUMBERS, "--system": TOKEN,
    "--engine": st.sampled_from(["llamacpp", "vllm", "sglang", "mlx", "transformers", "nope"]),
    "--key-env": st.sampled_from(["EMBER_TEST_KEY", "1BAD", "PATH", ""]) | st.text(max_size=6),
    "--model": NAMES,
    "--user": NAMES, "--password-env": st.sampled_from(["EMBER_TEST_KEY", "1BAD", ""]),
    "--replicas": NUMBERS, "--gpus": mostly(["auto", "0", "-1", "2", "x"], st.text(max_size=4)),
}
CLUSTER_URLS = mostly(["http://127.0.0.1:9", "http://127.0.0.1:99999", "ftp://x", "http://", "127.0.0.1:9"],
                      st.text(max_size=10))
#: Each command's positional arguments and options, as its parser has them.
GRAMMAR = {
    "chat": ([NAMES, TOKEN], ["--hardware", "--set", "--max-tokens", "--temperature", "--engine", "--system",
                              "--json", "-q"]),
    "models": ([], ["--hardware", "--json", "--fits"]),
    "doctor": ([], ["--hardware", "--json"]),
    "pull": ([NAMES], ["--json"]),
    "remote add": ([NAMES, URLS], ["--key-env", "--no-check", "--replace", "--key-stdin"]),
    "remote chat": ([NAMES, TOKEN], ["--model", "--max-tokens", "--json"]),
    "remote list": ([], ["--json"]),
    "remote remove": ([NAMES], []),
    "engine-python": ([st.sampled_from(["vllm", "sglang", "mlx", "transformers", "llamacpp"]), FILES], ["--reset"]),
    "diagnose": ([FILES], ["--engine", "--json"]),
    "params": ([], ["--engine", "--json"]),
    "cluster add": ([NAMES, CLUSTER_URLS], ["--user", "--password-env", "--key-env", "--key-stdin"]),
    "cluster list": ([], ["--json"]),
    "cluster remove": ([NAMES], []),
    "cluster models": ([NAMES], ["--json"]),
    "cluster launch": ([NAMES, NAMES], ["--engine", "--set", "--replicas", "--gpus", "--json"]),
    "cluster stop": ([NAMES, NAMES], []),
}


@st.composite
def command_lines(draw) -> list[str]:
    """A command line as its parser expects it, with right and wrong values, now and then a junk word."""
    command = draw(st.sampled_from(sorted(GRAMMAR)))
    positional, options = GRAMMAR[command]
    argv = command.split()
    argv += [draw(p) for p in positional[:draw(st.integers(0, len(positional)))]]
    for option in draw(st.lists(st.sampled_from(options), max_size=3)) if options else []:
        argv.append(option)
        if option in OPTION_VALUES:
            argv.append(draw(OPTION_VALUES[option]))
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(TOKEN))
    return argv


@settings(FUZZ, max_examples=EXAMPLES or 80)
@given(argv=command_lines())
def test_each_command_with_names_and_options_right_and_wrong(ember, tmp_path, argv):
    """A remote "gone" is there to talk to (its server does not answer); "@list" and its kin are files of junk."""
    (paths.config_dir() / "remotes.json").write_text(json.dumps(  # as `ember remote add --no-check` leaves it
        {"remotes": [{"name": "gone", "url": "http://127.0.0.1:9/v1", "key_source": "none", "key_env": None}]}))
    for name, content in JUNK_FILES.items():
        (tmp_path / name[1:]).write_text(content)
    argv = [str(tmp_path / a[1:]) if a in JUNK_FILES else a for a in argv]
    if argv[0] == "engine-python" and len(argv) > 2 and os.path.exists(argv[2]):
        argv[2] = "/nonexistent"  # an existing path would become the engine's interpreter and be run
    code, out, err, started = ember(argv)
    _no_traceback(code, out, err)


# -- 2. --set values ----------------------------------------------------------------------------------

SCHEMA = P.llamacpp_schema()
KEYS = sorted(k for k, s in SCHEMA.items() if s.type in ("int", "float", "bool", "enum"))
#: Where llama.cpp breaks even though the field takes the number (FACTS): no slots hang every request,
#: a context under 256 aborts, more than 256 sequences are refused, layers below -1 mean nothing.
HAZARDS = {"n_parallel": lambda v: v < 1 or v > 256, "n_ctx": lambda v: v < 0 or 0 < v < 256,
           "n_gpu_layers": lambda v: v < -1}


def _field_takes(key: str, value: object) -> bool:
    """The real llama.cpp setter takes the value (some fields are unsigned, 8- or 16-bit)."""
    import xllamacpp  # the judge is llama.cpp's own struct
    try:
        P.apply(xllamacpp.CommonParams(), {key: value}, SCHEMA)
    except (OverflowError, TypeError, ValueError, KeyError):
        return False
    return True


def _expected_invalid(key: str, kind: str, value: object) -> bool:
    """Whether a value is certainly one llama.cpp cannot take, by its own type and the measured hazards."""
    spec = SCHEMA[key]
    if kind == "word":
        return spec.type in ("int", "float") or (spec.type == "bool" and value not in P._TRUE | P._FALSE) or \
            (spec.type == "enum" and value not in spec.choices)
    if kind == "int":
        if spec.type == "bool":
            return value not in (0, 1)
        if spec.type == "enum":
            return True
        if spec.type == "float":
            return False
        return not INT32_MIN <= value <= INT32_MAX or HAZARDS.get(key, lambda v: False)(value) \
            or not _field_takes(key, value)
    if kind == "float":
        if spec.type == "float":
            return not math.isfinite(value)
        return True  # "1.5" is no whole number, no true/false and no choice
    return False


EDGES = [INT32_MIN - 1, INT32_MIN, INT32_MAX, INT32_MAX + 1, 2 ** 32, 2 ** 63, -2, -1, 0, 1, 127, 128, 255, 256, 257,
         300, 32768, 65535, 65536, 99_999_999_999]
INTS = st.one_of(st.sampled_from(EDGES), st.sampled_from(EDGES), st.integers(-300, 300), st.integers())
VALUE = st.one_of(
    st.tuples(st.just("int"), INTS),
    st.tuples(st.just("int"), INTS),
    st.tuples(st.just("float"), st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                           st.sampled_from([math.nan, math.inf, -math.inf, 0.5, -2.5, 1e308]))),
    st.tuples(st.just("word"), st.one_of(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10),
                                          st.sampled_from(["true", "false", "yes", "off", "q8_0", "f16", "none"]))),
)
#: Keys whose fields are narrower than a C int (unsigned, 8- or 16-bit), found by asking the real setter.
NARROW = sorted(k for k in KEYS if SCHEMA[k].type == "int" and not all(
    _field_takes(k, v) for v in (-1, 65536, INT32_MAX)))


@settings(FUZZ, max_examples=EXAMPLES or 80)
@given(key=st.one_of(st.sampled_from(KEYS), st.sampled_from(NARROW)), value=VALUE)
def test_a_set_value_llamacpp_cannot_take_never_starts_an_engine(ember, key, value):
    kind, v = value
    text = repr(v) if kind == "float" and math.isfinite(v) else str(v)
    code, out, err, started = ember(["chat", "starter", "--set", f"{key}={text}", "hi"])
    _no_traceback(code, out, err)
    if _expected_invalid(key, kind, v):
        assert not started, f"an engine was started with {key}={text}"
        assert code == 1 and key in err, err


# -- 3. hardware profiles ------------------------------------------------------------------------------

GOOD = {"os": "linux", "arch": "x86_64", "cpu_name": "AMD EPYC", "cpu_cores": 8, "ram_total_bytes": 16 * 2 ** 30,
        "ram_available_bytes": 12 * 2 ** 30, "apple_silicon": False, "llamacpp_build": "cuda",
        "gpus": [{"name": "NVIDIA GeForce RTX 4090", "vendor": "nvidia", "backend": "cuda",
                  "memory_total_bytes": 24 * 2 ** 30, "memory_free_bytes": 20 * 2 ** 30, "llamacpp_device": "CUDA0"}]}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
MEMORY = ["ram_total_bytes", "ram_available_bytes"]
GPU_MEMORY = ["memory_total_bytes", "memory_free_bytes"]


@st.composite
def profiles(draw):
    """A near-valid profile with one field replaced (or dropped), or any JSON at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(JSON)
    p = json.loads(json.dumps(GOOD))
    where = draw(st.sampled_from(["top", "gpu"]))
    target = p if where == "top" else p["gpus"][0]
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.booleans()):
        target[key] = draw(JSON | st.integers(-2 ** 64, 2 ** 64))
    else:
        del target[key]
    return p


def _claims_impossible_memory(p) -> bool:
    if not isinstance(p, dict):
        return False
    values = [p.get(k) for k in MEMORY]
    gpus = p.get("gpus") if isinstance(p.get("gpus"), list) else []
    values += [g.get(k) for g in gpus if isinstance(g, dict) for k in GPU_MEMORY]
    return any(isinstance(v, int) and not isinstance(v, bool) and v < 0 for v in values)


@FUZZ
@given(profile=profiles(), command=st.sampled_from(["doctor", "models", "chat"]))
def test_hardware_profiles_are_taken_or_refused_naming_the_field(ember, tmp_path, profile, command):
    f = tmp_path / "hw.json"
    f.write_text(json.dumps(profile))
    argv = {"doctor": ["doctor", "--json"], "models": ["models", "--json"], "chat": ["chat", "starter", "hi"]}[command]
    code, out, err, started = ember([*argv, "--hardware", str(f)])
    _no_traceback(code, out, err)
    refused = err.startswith(f"ember: hardware profile {f}: ")
    if _claims_impossible_memory(profile):
        assert refused and code == 1 and not started, err
    if refused:
        assert code == 1 and not started and out == ""
