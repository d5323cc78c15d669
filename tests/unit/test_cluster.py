"""Issue 16 without a cluster: Xinference's answers (verbatim, as a real 4.1.0 gave them) read into the words
a user sees, Ember's engine and parameters as Xinference's launch, the cluster as a machine to fit models on,
and where the secrets live. The same paths run against a real cluster in tests/integration/test_cluster.py."""
from __future__ import annotations

import json

import httpx
import keyring
import keyring.backend
import pytest

from engines import paths
from engines.chat.client import EngineHTTPError
from engines.cluster import diagnosis, launching, store
from engines.cluster.xinference import (Client, ClusterError, ClusterInfo, Device, Failure, Worker, http_error,
                                        strip_actor)
from engines.diagnosis.types import Kind
from engines.running.params import ParamError

KEY_ONLY = '{"detail":"API keys can only access model query and inference endpoints"}'
NOT_RUNNING = ('{"detail":"[address=127.0.0.1:36752, pid=32663] Model not found in the model list, uid: nope. '
               'Available model uids: [\'u\']"}')
GENERIC_500 = '{"detail":"The chat completion request failed. Check the server logs for details."}'
OVERFLOW_EVENT = ("[address=127.0.0.1:43797, pid=1550] request (1509 tokens) exceeds the available context size "
                  "(1024 tokens), try increasing it")
INIT_FAILED = "[address=127.0.0.1:45433, pid=2447] Failed to init server, please check the input params."


@pytest.mark.parametrize("status, body, kind", [
    (401, '{"detail":"Could not validate credentials"}', Failure.AUTH_REQUIRED),
    (401, '{"detail":"Incorrect username or password"}', Failure.AUTH_REQUIRED),
    (403, KEY_ONLY, Failure.KEY_ONLY),
    (403, '{"detail":"Permission denied"}', Failure.FORBIDDEN),
    (404, NOT_RUNNING, Failure.UNKNOWN_MODEL),
    (400, '{"detail":"[address=127.0.0.1:36752, pid=32663] Model not found in the model list, uid: bad"}',
     Failure.UNKNOWN_MODEL),
    (500, '{"detail":"[address=127.0.0.1:19999, pid=823] Remote server 127.0.0.1:19999 closed"}',
     Failure.WORKER_LOST),
    (500, GENERIC_500, Failure.SERVER_ERROR),
    (500, "Internal Server Error", Failure.SERVER_ERROR),
])
def test_xinference_answers_become_failures(status, body, kind):
    err = http_error(status, body, "u")
    assert err.kind is kind and err.status == status
    assert "[address=" not in err.detail  # the worker's actor address is no news to a user


def transport(routes: dict):
    """A FAKE Xinference: (method, path) -> (status, JSON); a list value answers in turn."""
    def handle(request: httpx.Request) -> httpx.Response:
        answer = routes[(request.method, request.url.path)]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        status, body = answer
        return httpx.Response(status, text=body if isinstance(body, str) else json.dumps(body))
    return httpx.MockTransport(handle)


def instance(status: str, error: str | None = None) -> list:
    return [{"model_uid": "starter", "status": status,
             "replica_statuses": [{"status": status, "error_message": error}]}]


def test_a_launch_the_worker_refuses_is_said_with_its_words():
    client = Client("http://x", token="t", transport=transport({
        ("GET", "/v1/models/instances"): [(200, instance("CREATING")), (200, instance("ERROR", INIT_FAILED))],
        ("GET", "/v1/models/starter/progress"): (200, {"progress": 0.82, "replicas": [{"info": "Loading model"}]}),
        ("GET", "/v1/models/starter/events"): (200, [{"event_type": "INFO", "event_ts": 1, "event_content": "x"}]),
    }))
    seen = []
    with pytest.raises(ClusterError) as err:
        client.wait("starter", timeout=10, on_progress=seen.append, poll=0.01)
    assert seen[0].stage == "Loading model" and seen[0].progress == pytest.approx(0.82)
    assert err.value.kind is Failure.LAUNCH_FAILED
    d = diagnosis.diagnose_cluster_error(err.value, cluster="lab", client=client)
    assert d.kind is Kind.STARTUP_FAILED and d.title == "starter could not start on lab"
    assert "Failed to init server" in d.explanation and "worker's log on the cluster" in d.explanation


def test_overflow_behind_the_generic_500_is_read_from_the_events(starter_spec):
    plan = launching.ClusterPlan("lab", "starter", "ember-starter", "llamacpp", {"n_ctx": 2048, "n_parallel": 2},
                                 {"n_ctx": 2048, "n_parallel": 2}, starter_spec)
    client = Client("http://x", api_key="xf-k", transport=transport({
        ("GET", "/v1/models/starter/events"): (200, [
            {"event_type": "ERROR", "event_ts": 100, "event_content": "an older failure"},
            {"event_type": "ERROR", "event_ts": 1000, "event_content": OVERFLOW_EVENT}])}))
    exc = EngineHTTPError(500, json.loads(GENERIC_500), GENERIC_500)
    d = diagnosis.diagnose_chat(exc, plan, client, since=999.5)
    assert d.kind is Kind.CONTEXT_EXCEEDED and d.facts["source"] == "events"
    assert "Your message needs 1,509 tokens; each slot holds 1,024 (n_ctx 2,048 / n_parallel 2)." in d.explanation
    assert [f.changes for f in d.fixes[:2]] == [{"n_parallel": 1}, {"n_ctx": 4096}]
    assert d.log_tail == [strip_actor(OVERFLOW_EVENT)]  # only this request's event
    fixed = plan.with_changes(d.fixes[0].changes)
    assert fixed.params == {"n_ctx": 2048, "n_parallel": 1} and fixed.uid == "starter"  # the rest kept
    assert fixed.launch_request().body()["n_parallel"] == 1


@pytest.mark.parametrize("status, body, title", [
    (404, NOT_RUNNING, "starter is not running on lab"),
    (500, '{"detail":"Remote server 127.0.0.1:19999 closed"}', "The cluster lab lost the worker running starter"),
    (401, '{"detail":"Could not validate credentials"}', "The cluster lab refused the login or API key"),
])
def test_chat_failures_only_a_cluster_has_get_their_own_words(status, body, title):
    plan = launching.ClusterPlan("lab", "starter", "ember-starter", "llamacpp", {}, {})
    d = diagnosis.diagnose_chat(EngineHTTPError(status, json.loads(body), body), plan, None)
    assert d.title == title


def test_a_key_cannot_launch_and_the_fix_says_how_to_add_a_login():
    d = diagnosis.diagnose_cluster_error(http_error(403, KEY_ONLY, "starter"), cluster="lab")
    assert d.kind is Kind.AUTH_FAILED and d.title == "An API key cannot launch or stop models on lab"
    assert "API keys can only access model query and inference endpoints" in d.explanation
    assert d.fixes[0].action == "edit_cluster" and "--user NAME --password-env VARIABLE" in d.fixes[0].note


def gpu_cluster(gpus: int = 2, vram_gib: int = 80) -> ClusterInfo:
    device = Device(gpus, gpus * vram_gib * 2**30, gpus * vram_gib * 2**30) if gpus else None
    return ClusterInfo("http://x", True, "4.1.0", [Worker("10.0.0.2:30001", 64, 512 * 2**30, 400 * 2**30, device),
                                                   Worker("10.0.0.3:30001", 8, 32 * 2**30, 30 * 2**30)])


def test_the_cluster_is_judged_by_its_largest_worker_never_this_computer(starter_spec):
    hw = launching.profile(gpu_cluster())
    assert [g.backend for g in hw.gpus] == ["cuda", "cuda"] and hw.cpu_cores == 64
    assert launching.fit_on(hw, starter_spec)[0] == "gpu"
    assert launching.fit_on(launching.profile(gpu_cluster(gpus=0)), starter_spec)[0] == "cpu"
    assert launching.fit_on(None, starter_spec) == ("unknown", "the cluster does not tell its devices to these "
                                                               "credentials")
    assert launching.fit_on(hw, None)[0] == "unknown"  # a built-in name: Ember has no file to size


def test_an_ember_model_launches_with_llamacpp_and_emberss_parameters(starter_spec):
    p = launching.plan("lab", "starter", info=gpu_cluster(), overrides=["n_ctx=2048", "sampling.top_k=20"],
                       replicas=2, n_gpu=1)
    body = p.launch_request().body()
    assert body == {"model_uid": "starter", "model_name": "ember-starter", "model_engine": "llama.cpp",
                    "model_type": "LLM", "replica": 2, "n_gpu": 1, "n_ctx": 2048, "sampling.top_k": 20,
                    "n_parallel": 1}
    assert p.fit is not None and p.fit.fit == "gpu"
    with pytest.raises(ParamError):
        launching.plan("lab", "starter", info=gpu_cluster(), overrides=["n_ctxx=2048"])


def test_a_builtin_model_gets_the_engine_emberss_rules_put_first():
    client = Client("http://x", token="t", transport=transport({
        ("GET", "/v1/engines/qwen2.5-instruct"): (200, {"Transformers": [{}], "llama.cpp": [{}], "vLLM": [{}]})}))
    p = launching.plan("lab", "qwen2.5-instruct", client, gpu_cluster())
    assert p.engine == "llamacpp" and p.launch_request().body()["model_engine"] == "llama.cpp"
    p = launching.plan("lab", "qwen2.5-instruct", client, gpu_cluster(), engine="vllm", overrides=["max_model_len=8192"])
    assert p.launch_request().body()["model_engine"] == "vLLM" and p.params["max_model_len"] == 8192
    with pytest.raises(launching.ClusterPlanError, match="cannot run it with MLX"):
        launching.plan("lab", "qwen2.5-instruct", client, gpu_cluster(), engine="mlx")


def test_the_starter_registers_from_its_folder_with_a_chat_family(starter_spec):
    spec = launching.registration_spec(starter_spec)
    assert spec["model_name"] == "ember-starter" and spec["model_family"] == "gemma-3-1b-it"
    s = spec["model_specs"][0]
    assert s["model_format"] == "ggufv2" and s["quantization"] == "Q4_K_M" and s["model_size_in_billions"] == "0_27"
    assert s["model_uri"].startswith("file:///") and s["model_file_name_template"] == "gemma-3-270m-q4_k_m.gguf"


class FakeMemoryKeyring(keyring.backend.KeyringBackend):
    """A FAKE keyring for tests: secrets in a dict, gone with the process."""

    priority = 1

    def __init__(self):
        super().__init__()
        self.secrets: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.secrets.get((service, username))

    def set_password(self, service, username, password):
        self.secrets[(service, username)] = password

    def delete_password(self, service, username):
        self.secrets.pop((service, username))


def test_secrets_live_in_the_keyring_or_a_named_variable_never_in_the_file(fresh_home, monkeypatch):
    fake = FakeMemoryKeyring()
    monkeypatch.setattr(keyring, "get_keyring", lambda: fake)
    monkeypatch.setattr(keyring, "set_password", fake.set_password)
    monkeypatch.setattr(keyring, "get_password", fake.get_password)
    monkeypatch.setattr(keyring, "delete_password", fake.delete_password)
    c = store.make("lab", "http://gpu-box:9997/v1/", user="admin", password="s3cret-pass", key_env="LAB_KEY")
    store.save(c)
    assert c.url == "http://gpu-box:9997" and c.openai_url == "http://gpu-box:9997/v1"
    text = (paths.config_dir() / "clusters.json").read_text()
    assert "s3cret-pass" not in text and "LAB_KEY" in text
    with pytest.raises(store.ClusterConfigError, match=r"\$LAB_KEY is not set"):
        store.credentials(store.get("lab"))
    monkeypatch.setenv("LAB_KEY", "xf-abc")
    assert store.credentials(store.get("lab")) == store.Credentials("admin", "s3cret-pass", "xf-abc")
    store.remove("lab")
    assert fake.secrets == {}  # the password left the keyring with the cluster
    with pytest.raises(store.ClusterConfigError, match="needs a password"):
        store.make("lab", "http://gpu-box:9997", user="admin")
