"""Issue 16: Ember drives a real Xinference cluster (supervisor + worker on loopback, auth on).

In order, as a user would: add the cluster with an admin login, launch the starter
(registered on first launch) with the llama.cpp engine, chat streaming, overflow a
slot (Xinference answers a generic 500; the model's events hold llama.cpp's words),
apply the diagnosis' first fix (a relaunch there) and send the same message again,
route through the gateway's router, stop it. An API key alone may chat but not launch.
The timings land in test-artifacts/cluster-timings.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from desktop.app import EmberApp
from engines import paths
from engines.chat.client import ChatStream, Delta, Finished
from engines.cluster import launching, ops, session, store
from engines.cluster.xinference import Client, ClusterError, Failure, Launch
from engines.gateway.routing import Router
from engines.running.manager import EngineManager

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PASSWORD_VAR = "EMBER_TEST_CLUSTER_PASSWORD"
KEY_VAR = "EMBER_TEST_CLUSTER_KEY"
LONG_MESSAGE = "word " * 1500   # about 1,500 tokens: more than one of two slots of n_ctx 2,048
TIMINGS: dict[str, float] = {}


def ember(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engines.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def lab(xinference_cluster, starter_path):
    """The cluster added as ``lab`` with the admin login (password in a variable, as on a headless box)."""
    os.environ[PASSWORD_VAR] = xinference_cluster.password
    os.environ[KEY_VAR] = xinference_cluster.api_key
    TIMINGS.update(xinference_cluster.timings)
    yield xinference_cluster
    for name in ("lab", "keyonly"):
        ops.remove(name)
    out = ROOT / "test-artifacts" / "cluster-timings.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(TIMINGS, indent=2))


def test_add_asks_the_cluster_what_it_is_and_keeps_no_secret(lab):
    r = ember("cluster", "add", "lab", lab.url + "/", "--user", lab.user, "--password-env", PASSWORD_VAR)
    assert r.returncode == 0, r.stderr
    assert f"Added lab: Xinference 4.1.0 at {lab.url}; admin login admin (password from ${PASSWORD_VAR})" in r.stdout
    assert "workers: 127.0.0.1:" in r.stdout and "no GPU" in r.stdout and "CPU cores" in r.stdout
    text = (paths.config_dir() / "clusters.json").read_text()
    assert lab.password not in text and PASSWORD_VAR in text
    assert "warning" not in r.stderr  # auth is on: no warning


def test_a_wrong_password_is_refused_with_the_clusters_words(lab):
    r = ember("cluster", "add", "bad", lab.url, "--user", lab.user, "--password-env", "WRONG_PW",
              env={"WRONG_PW": "not-the-password"})
    assert r.returncode == 1
    assert "The cluster bad refused the login or API key" in r.stderr and "Incorrect username or password" in r.stderr
    assert "bad" not in [c.name for c in store.list_clusters()]


def test_launch_registers_the_starter_and_runs_it_with_llamacpp(lab):
    t0 = time.monotonic()
    r = ember("cluster", "launch", "lab", "starter", "--set", "n_ctx=2048", "--set", "n_parallel=2")
    TIMINGS["launch_s"] = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "launching starter on lab with llama.cpp (n_ctx 2048, n_parallel 2)" in r.stderr
    assert "ember: starter: loading model" in r.stderr.lower() or "%" in r.stderr  # progress while it loads
    assert "starter is running on lab (llama.cpp)" in r.stdout
    with session.connect(store.get("lab"), admin=True) as client:
        running = {m.uid: m for m in client.running()}
        assert running["starter"].engine == "llama.cpp" and running["starter"].model_name == "ember-starter"
        reg = client.registration("ember-starter")
    assert reg["model_family"] == "gemma-3-1b-it"
    assert reg["model_specs"][0]["model_uri"] == Path(lab_starter_path()).parent.as_uri()
    models = ember("cluster", "models", "lab")
    assert "starter" in models.stdout and "llama.cpp" in models.stdout and "Xinference 4.1.0" in models.stdout


def lab_starter_path() -> str:
    from engines.models import lookup
    return lookup.resolve("starter").path


def test_chat_streams_from_the_cluster(lab):
    cluster = store.get("lab")
    with session.connect(cluster) as client:
        stream = ChatStream(cluster.openai_url, [{"role": "user", "content": "Hello"}], client.inference_key,
                            model="starter", max_tokens=12)
        t0 = time.monotonic()
        first = None
        pieces = []
        for ev in stream:
            if isinstance(ev, Delta):
                first = first or time.monotonic() - t0
                pieces.append(ev.text)
            elif isinstance(ev, Finished):
                finished = ev
    TIMINGS["first_token_s"] = first
    assert len(pieces) > 1 and "".join(pieces).strip()  # tokens arrived one by one
    assert finished.finish_reason in ("length", "stop")  # 12 tokens, or the model ended its answer sooner
    r = ember("chat", "starter", "--on", "lab", "--max-tokens", "8", "Hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert "launching" not in r.stderr  # it was running: no relaunch


def test_overflow_is_diagnosed_from_the_events_and_its_fix_works(lab):
    r = ember("chat", "starter", "--on", "lab", "--json", "--max-tokens", "4", LONG_MESSAGE)
    assert r.returncode == 1
    d = json.loads(r.stderr[r.stderr.index("{"):])
    assert d["kind"] == "context_exceeded" and d["facts"]["source"] == "events"
    assert d["facts"]["n_ctx_slot"] == 1024 and d["facts"]["n_prompt_tokens"] > 1024
    assert "exceeds the available context size (1024 tokens)" in d["log_tail"][-1]
    first = d["fixes"][0]
    assert first["changes"] == {"n_parallel": 1}  # one slot holds the whole 2,048
    t0 = time.monotonic()
    again = ember("chat", "starter", "--on", "lab", "--max-tokens", "4",
                  *[a for k, v in first["changes"].items() for a in ("--set", f"{k}={v}")], LONG_MESSAGE)
    TIMINGS["fix_relaunch_and_answer_s"] = time.monotonic() - t0
    assert again.returncode == 0, again.stderr
    assert "launching starter on lab with llama.cpp (n_ctx 2048, n_parallel 1)" in again.stderr  # only the fix changed


def test_the_gateway_lists_and_routes_cluster_models(lab):
    router = Router(EngineManager(idle_timeout=None))
    assert "lab/starter" in router.names()
    target = router.target(router.choose("lab/starter"))
    assert target.base_url == lab.url + "/v1" and target.upstream_model == "starter" and not target.local
    text = "".join(ev.text for ev in ChatStream(target.base_url, [{"role": "user", "content": "Hi"}],
                                                target.api_key, model=target.upstream_model, max_tokens=6)
                   if isinstance(ev, Delta))
    assert text.strip()


def test_an_api_key_alone_may_chat_but_not_launch(lab):
    r = ember("cluster", "add", "keyonly", lab.url, "--key-env", KEY_VAR)
    assert r.returncode == 0, r.stderr
    assert "needs an admin login" in r.stderr  # said once, when added
    chat = ember("chat", "starter", "--on", "keyonly", "--max-tokens", "4", "Hi")
    assert chat.returncode == 0, chat.stderr
    launch = ember("cluster", "launch", "keyonly", "starter")
    assert launch.returncode == 1
    assert "An API key cannot launch or stop models on keyonly" in launch.stderr
    assert "API keys can only access model query and inference endpoints" in launch.stderr
    assert "--user NAME --password-env VARIABLE" in launch.stderr
    # and the cluster itself refuses a key's launch with those words
    with Client(lab.url, api_key=lab.api_key) as client, pytest.raises(ClusterError) as err:
        client.launch(Launch("x", "ember-starter", "llama.cpp"))
    assert err.value.kind is Failure.KEY_ONLY and err.value.status == 403
    assert err.value.detail == "API keys can only access model query and inference endpoints"


@pytest.mark.qt_log_ignore("systemTrayWindowChanged")
def test_the_tray_lists_it_and_stops_it_on_the_cluster(lab, qtbot):
    """The tray (offscreen here; the real tray is tested under Xvfb elsewhere) shows what runs on the
    user's clusters and its Stop ends it there; the CLI's stop is tested on a relaunch below."""
    app = EmberApp(QApplication.instance(), use_tray=True)
    try:
        qtbot.waitUntil(lambda: ("lab", "starter") in app.tray.cluster_models, timeout=30_000)
        app.tray.rebuild_menu()
        entry = next(a for a in app.tray.menu.actions() if a.text() == "lab/starter (on the cluster)")
        stop = next(a for a in entry.menu().actions() if a.text() == "Stop")
        stop.trigger()
        qtbot.waitUntil(lambda: ("lab", "starter") not in app.tray.cluster_models, timeout=30_000)
        assert "starter" not in [m.uid for m in ops.overview("lab", with_builtin=False).running]
    finally:
        app.quit()
        app.tray.hide()
        QApplication.instance().setQuitOnLastWindowClosed(True)
    relaunched = ember("cluster", "launch", "lab", "starter")
    assert relaunched.returncode == 0, relaunched.stderr


def test_stop_terminates_it_on_the_cluster(lab):
    t0 = time.monotonic()
    r = ember("cluster", "stop", "lab", "starter")
    TIMINGS["stop_s"] = time.monotonic() - t0
    assert r.returncode == 0 and "Stopped starter on lab" in r.stdout, r.stderr
    assert "starter" not in [m.uid for m in ops.overview("lab", with_builtin=False).running]
    again = ember("cluster", "stop", "lab", "starter")
    assert again.returncode == 1 and "starter is not running on lab" in again.stderr
    chat = ember("chat", "starter", "--on", "keyonly", "--max-tokens", "4", "Hi")
    assert chat.returncode == 1  # not running, and a key cannot launch it
    assert "An API key cannot launch or stop models on keyonly" in chat.stderr
