"""Issue 14, point 6: no traceback reaches a user from the command line; bad input is refused in words.

Each case is one the issue's tester met: hardware profiles that are not profiles (the list
``[1,2,3]``, ``null``, negative memory), `ember remote` against servers that do not answer, a port
out of range, a key variable that is not set, a name added twice. The commands run in-process
(``cli.main``) for speed, with one real process for the issue's own reproduction. Where a server
must answer, it is a tiny OpenAI-shaped one on 127.0.0.1 (``/v1/models`` only).
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engines import cli
from engines.chat import remotes
from engines.running import launch, supervisor
from tests.conftest import ember_cmd

GOOD = {"os": "linux", "arch": "x86_64", "cpu_cores": 4, "ram_total_bytes": 8 * 2**30,
        "ram_available_bytes": 6 * 2**30, "gpus": []}
GPU = {"name": "NVIDIA GeForce RTX 4090", "vendor": "nvidia", "backend": "cuda",
       "memory_total_bytes": 25757220864, "memory_free_bytes": 24000000000, "llamacpp_device": "CUDA0"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    for k in list(os.environ):
        if k.startswith("EMBER_TEST_"):
            monkeypatch.delenv(k)
    remotes._models_cache.clear()
    remotes._failures.clear()
    return tmp_path / "home"


@pytest.fixture
def no_engine(monkeypatch):
    monkeypatch.setattr(launch, "start", lambda *a, **kw: pytest.fail("an engine was started"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's refusal: usage and the reason, exit status 2
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


PROFILES = [
    ([1, 2, 3], "must be a JSON object like `ember doctor --json` writes, not a list"),
    (None, "must be a JSON object like `ember doctor --json` writes, not null"),
    ("a laptop", 'must be a JSON object like `ember doctor --json` writes, not text ("a laptop")'),
    ({**GOOD, "cpu_cores": 0}, "cpu_cores must be between 1 and 1,000,000 cores, not 0"),
    ({**GOOD, "cpu_cores": "4"}, 'cpu_cores must be a whole number of cores, not text ("4")'),
    ({**GOOD, "ram_total_bytes": -8}, "ram_total_bytes must be between 1 and 1,152,921,504,606,846,976 bytes, not -8"),
    ({**GOOD, "ram_available_bytes": 9 * 2**30}, "ram_available_bytes (9,663,676,416) cannot be more than "
                                                 "ram_total_bytes (8,589,934,592)"),
    ({k: v for k, v in GOOD.items() if k != "arch"}, "arch is missing"),
    ({**GOOD, "gpus": {"name": "x"}}, "gpus must be a list of GPUs, not an object"),
    ({**GOOD, "gpus": [7]}, "gpus[0] must be an object describing a GPU, not a number (7)"),
    ({**GOOD, "gpus": [{**GPU, "memory_free_bytes": -1, "memory_total_bytes": -1}]},
     "gpus[0].memory_total_bytes must be between 1 and 1,152,921,504,606,846,976 bytes, not -1"),
    ({**GOOD, "gpus": [{**GPU, "memory_free_bytes": 2 * 25757220864}]},
     "gpus[0].memory_free_bytes (51,514,441,728) cannot be more than memory_total_bytes (25,757,220,864)"),
    ({**GOOD, "gpus": [{**GPU, "llamacpp_device": 0}]}, "gpus[0].llamacpp_device must be text or null, not a number (0)"),
    ({"hardware": {**GOOD, "os": "beos"}}, 'os must be linux, darwin or windows, not "beos"'),
]


@pytest.mark.parametrize("command", ["models", "doctor"])
@pytest.mark.parametrize("profile,problem", PROFILES, ids=[str(i) for i in range(len(PROFILES))])
def test_a_malformed_hardware_profile_is_refused_with_the_field_at_fault(home, tmp_path, capsys, command,
                                                                          profile, problem):
    f = tmp_path / "hw.json"
    f.write_text(json.dumps(profile))
    code, out, err = _run(capsys, command, "--hardware", str(f))
    assert code == 1
    assert err == f"ember: hardware profile {f}: {problem}\n"
    assert out == ""


def test_a_profile_that_is_not_json_or_not_there_is_said_so(home, tmp_path, capsys):
    f = tmp_path / "hw.json"
    f.write_text("{not json")
    code, _, err = _run(capsys, "models", "--hardware", str(f))
    assert code == 1 and err.startswith(f"ember: hardware profile {f}: is not JSON: ")
    code, _, err = _run(capsys, "doctor", "--hardware", str(tmp_path / "missing.json"))
    assert code == 1 and err == f"ember: hardware profile {tmp_path / 'missing.json'}: cannot be read: No such file or directory\n"


def test_the_issues_profiles_in_a_real_process_print_no_traceback(home, tmp_path):
    for command, content in (("models", "[1,2,3]"), ("doctor", "null")):
        f = tmp_path / "hw.json"
        f.write_text(content)
        out = subprocess.run(ember_cmd(command, "--hardware", str(f)), capture_output=True, text=True, timeout=120,
                             env=dict(os.environ))
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert out.stderr.startswith(f"ember: hardware profile {f}: must be a JSON object")


# -- remotes --------------------------------------------------------------------------------------------

@pytest.fixture
def server():
    """An OpenAI-shaped server that lists one model."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": "lab-model", "object": "model"}]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _dead_url() -> str:
    return f"http://127.0.0.1:{supervisor.free_port()}"


def test_remote_chat_to_an_unreachable_server_gets_the_diagnosis(home, capsys):
    remotes.add("gone", _dead_url())  # it answered once; now it is down
    code, out, err = _run(capsys, "remote", "chat", "gone", "hello")
    assert code == 1
    assert err.startswith("Error: Cannot reach the server\n")
    assert "Check that the server is running and that the address is right." in err
    assert "Traceback" not in err and "httpx" not in err.split("\n")[0]


def test_remote_add_of_an_unreachable_server_is_not_kept(home, capsys):
    url = _dead_url()
    code, out, err = _run(capsys, "remote", "add", "lab", url)
    assert code == 1
    assert "Added" not in out
    assert err.startswith("Error: Cannot reach the server\n")
    assert err.rstrip().endswith("ember: lab was not added. Check the address and the key, or add it without "
                                 "asking the server with --no-check")
    assert remotes.list_remotes() == []
    code, out, err = _run(capsys, "remote", "add", "lab", url, "--no-check")  # the user says it is down for now
    assert code == 0 and out == f"Added lab: {url}/v1 (no API key)\n"


@pytest.mark.parametrize("url,problem", [
    ("http://127.0.0.1:99999", "has no valid port: a port is a number from 1 to 65535"),
    ("http://127.0.0.1:0", "has no valid port"),
    ("http://127.0.0.1:-5", "has no valid port"),
    ("ftp://127.0.0.1", "is not an http:// or https:// URL"),
])
def test_remote_add_refuses_a_bad_url_or_port(home, capsys, url, problem):
    code, out, err = _run(capsys, "remote", "add", "lab", url, "--no-check")
    assert code == 1 and problem in err and err.startswith("ember: remote lab: ")
    assert remotes.list_remotes() == []


def test_remote_add_refuses_a_key_variable_that_is_not_set(home, capsys, server):
    code, out, err = _run(capsys, "remote", "add", "lab", server, "--key-env", "EMBER_TEST_UNSET_KEY")
    assert code == 1
    assert err == ("ember: remote lab: the variable EMBER_TEST_UNSET_KEY is not set here: set it to the API key "
                   "(export EMBER_TEST_UNSET_KEY=...) and add the remote again\n")
    assert remotes.list_remotes() == []


def test_remote_add_asks_before_replacing_a_remote_of_the_same_name(home, capsys, server, monkeypatch):
    code, out, _ = _run(capsys, "remote", "add", "lab", server)
    assert code == 0 and out == f"Added lab: {server}/v1 (no API key)\n  models: lab-model\n"
    other = server.replace("127.0.0.1", "localhost")
    code, out, err = _run(capsys, "remote", "add", "lab", other)  # no terminal to ask on: refused
    assert code == 1 and err == (f"ember: remote lab: already exists ({server}/v1); remove it first, or replace "
                                 "it with --replace\n")
    assert remotes.get("lab").url == f"{server}/v1"
    asked = []
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda q: asked.append(q) or "n")
    code, _, _ = _run(capsys, "remote", "add", "lab", other)
    assert code == 1 and asked == ["A remote named lab exists. Replace it? [y/N] "]
    assert remotes.get("lab").url == f"{server}/v1"
    monkeypatch.setattr("builtins.input", lambda q: "y")
    code, out, _ = _run(capsys, "remote", "add", "lab", other)
    assert code == 0 and out.startswith(f"Replaced lab: {other}/v1")
    code, out, _ = _run(capsys, "remote", "add", "lab", server, "--replace")
    assert code == 0 and remotes.get("lab").url == f"{server}/v1"


# -- numbers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["chat", "starter", "--max-tokens", "-1", "hi"], "argument --max-tokens: must be a number of tokens 1 or more, not -1"),
    (["chat", "starter", "--max-tokens", "0", "hi"], "argument --max-tokens: must be a number of tokens 1 or more, not 0"),
    (["serve", "--port", "99999"], "argument --port: must be a port from 0 to 65,535, not 99,999"),
    (["remote", "chat", "lab", "--max-tokens", "-3", "hi"], "argument --max-tokens: must be a number of tokens"),
])
def test_negative_or_impossible_numbers_are_refused_before_anything_starts(home, capsys, no_engine, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_an_error_no_command_expected_is_a_sentence_and_a_log_not_a_traceback(home, capsys, monkeypatch):
    """The last line of defence: a bug (here a doctor that raises) is named, and its traceback goes to a log."""
    def broken(args):
        raise RuntimeError("a bug no test has found yet")

    monkeypatch.setattr(cli, "cmd_doctor", broken)  # the parser is built at each call, with this one
    code, out, err = _run(capsys, "doctor")
    log = home / "logs" / "ember-cli.log"
    assert code == 1
    assert err == (f"ember: unexpected error (RuntimeError: a bug no test has found yet); the details are in {log}. "
                   "This is a bug in Ember: please report it with that log\n")
    assert "Traceback" in log.read_text() and "a bug no test has found yet" in log.read_text()

