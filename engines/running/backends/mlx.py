"""MLX through ``mlx_lm``'s own OpenAI-compatible server.

Chosen by the rules only on Apple silicon for MLX-format models; elsewhere only
when asked for (its CPU build runs safetensors folders on Linux, slowly).

Two things about ``mlx_lm.server`` (checked on mlx-lm 0.32) shape the command:
its ``/health`` answers 200 as soon as its generation thread runs, *before* the
model is loaded (and a model that fails to load leaves a server answering 503
forever); and it has no API key. So the server is started through a few lines
(:data:`BOOTSTRAP`) that hold the HTTP server back until the model has loaded
and exit with an error if loading failed, so "ready" means ready and a broken
model is a failed start. If a future mlx_lm renames those hooks, the bootstrap
falls back to the plain server. The engine listens on 127.0.0.1 only.

``mlx_lm.server`` also loads whatever a request's ``model`` field names (an
unknown name makes it try the Hub) and lists the Hub cache at ``/v1/models``.
The bootstrap makes the served name (``--served-model-name``, what ``ember
serve`` prints) the model's only id: ``/v1/models`` lists it alone, responses
carry it, a request without a name gets the loaded model, and one naming
another model gets 404 listing the served one, before mlx_lm sees it. It also
checks Ember's API key (``EMBER_API_KEY`` in its environment), which mlx_lm has
no option for: only Ember and its gateway reach the engine.
"""
from __future__ import annotations

import re
from typing import Mapping

from engines.diagnosis.types import Fix, Kind, log_table
from engines.machine.hardware import HardwareProfile
from engines.models.store import ModelSpec
from engines.running.backends import _server as S
from engines.running.backends.base import PlanView, Prepared, Roles, plan_param
from engines.running.backends.installed import LABELS
from engines.running.supervisor import Command

NAME = "mlx"

BOOTSTRAP = r"""
import sys, threading, logging
import mlx_lm.server as s
loaded, failed = threading.Event(), []
MP, RG = getattr(s, "ModelProvider", None), getattr(s, "ResponseGenerator", None)
if MP is not None and hasattr(MP, "load_default") and hasattr(s, "_run_http_server"):
    _load_default = MP.load_default
    def load_default(self):
        try:
            _load_default(self)
        except BaseException as exc:
            import traceback
            traceback.print_exc()
            failed.append(exc)
            raise
        finally:
            loaded.set()
    MP.load_default = load_default
    _run = s._run_http_server
    def run_http(host, port, generator, *a, **k):
        while not loaded.wait(0.2):
            if hasattr(generator, "is_healthy") and not generator.is_healthy:
                break
        if failed or (hasattr(generator, "is_healthy") and not generator.is_healthy):
            why = f": {type(failed[0]).__name__}: {failed[0]}" if failed else ""
            print("ember-mlx: the model failed to load" + why, file=sys.stderr, flush=True)
            import os; os._exit(1)
        print("ember-mlx: model loaded", file=sys.stderr, flush=True)
        return _run(host, port, generator, *a, **k)
    s._run_http_server = run_http
SERVED, H = None, getattr(s, "APIHandler", None)
if "--served-model-name" in sys.argv:
    i = sys.argv.index("--served-model-name")
    SERVED = sys.argv[i + 1]
    del sys.argv[i:i + 2]
if SERVED and MP is not None and all(hasattr(H, n) for n in ("do_POST", "validate_model_parameters",
                                                              "handle_models_request", "_set_completion_headers")):
    import io, json
    _init = MP.__init__
    def init(self, cli_args):
        _init(self, cli_args)
        self._model_map[SERVED] = cli_args.model
        self._adapter_map[SERVED] = getattr(cli_args, "adapter_path", None)
    MP.__init__ = init
    def send_json(handler, status, payload):
        data = json.dumps(payload).encode()
        handler._set_completion_headers(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()
    _post = H.do_POST
    def do_post(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            asked = json.loads(raw).get("model")
        except Exception:
            asked = None
        if asked not in (None, "", "default_model", SERVED):
            return send_json(self, 404, {"error": {
                "message": f"The model '{asked}' is not served here; this server serves '{SERVED}'",
                "type": "model_not_found", "code": 404, "served_models": [SERVED]}})
        rfile, self.rfile = self.rfile, io.BytesIO(raw)
        try:
            return _post(self)
        finally:
            self.rfile = rfile
    H.do_POST = do_post
    _validate = H.validate_model_parameters
    def validate(self):
        _validate(self)
        self.requested_model = SERVED  # do_post let only the served name (or none) through
    H.validate_model_parameters = validate
    H.handle_models_request = lambda self: send_json(self, 200, {"object": "list", "data": [
        {"id": SERVED, "object": "model", "created": self.created, "owned_by": "ember"}]})
import os, hmac
KEY = os.environ.pop("EMBER_API_KEY", "")
if KEY and H is not None:
    def keyed(method):
        def check(self):
            sent = self.headers.get("Authorization", "")
            if self.path.split("?")[0] != "/health" and not hmac.compare_digest(sent.encode(), f"Bearer {KEY}".encode()):
                data = b'{"error": {"message": "Invalid API key", "type": "authentication_error", "code": 401}}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True
                return None
            return method(self)
        return check
    for name in ("do_GET", "do_POST", "do_DELETE", "do_PUT"):
        if hasattr(H, name):
            setattr(H, name, keyed(getattr(H, name)))
    print("ember-mlx: API key required", file=sys.stderr, flush=True)
sys.argv = ["mlx_lm.server"] + sys.argv[1:]
s.main()
"""

TABLE: dict[str, S.Arg] = {a.spec.key: a for a in (
    S.arg("max_tokens", "int", 512, check=S.at_least(1), help="answer length when the request sets none"),
    S.arg("temperature", "float", 0.0, flag="--temp", check=S.between(0, 5),
          help="default sampling temperature (mlx_lm.server's --temp)"),
    S.arg("top_p", "float", 1.0, check=S.between(0, 1)),
    S.arg("top_k", "int", 0, check=S.at_least(0)),
    S.arg("min_p", "float", 0.0, check=S.between(0, 1)),
    S.arg("prompt_cache_size", "int", None, check=S.at_least(0), help="prompt caches kept between requests"),
    S.arg("kv_bits", "int", None, check=S.between(1, 8), help="quantize the KV cache to this many bits"),
    S.arg("chat_template_args", "str", None, help="JSON for the tokenizer's apply_chat_template"),
    S.arg("use_default_chat_template", "bool", False, store_true=True),
    S.arg("trust_remote_code", "bool", False, store_true=True),
    S.arg("log_level", "enum", "INFO", choices=("debug", "info", "warning", "error", "critical")),
)}

#: its own log lines, most specific first.
LOG_PATTERNS = log_table(
    (r"kIOGPUCommandBufferCallbackErrorOutOfMemory|Command buffer execution failed: Insufficient Memory",
     "oom_load", {"memory": "gpu"}),
    (r"\[metal::malloc\] Attempting to allocate (?P<alloc_bytes>\d+) bytes", "oom_load", {"memory": "gpu"}),
    (r"\[metal::malloc\] Resource limit \((?P<resource_limit>\d+)\) exceeded", "oom_load", {"memory": "gpu"}),
    (r"\[(?:malloc_or_wait|metal::malloc)\] Unable to allocate|std::bad_alloc", "oom_load", {"memory": "ram"}),
    (r"Model type (?P<architecture>\S+) not supported", "invalid_model", {"problem": "unknown_architecture"}),
    # weights that do not fit the model class: a conversion for another mlx-lm, or another model's files
    (r"Received (?P<extra>\d+) parameters not in model|Missing (?P<missing>\d+) parameters|"
     r"Expected shape \([\d, ]*\) but received shape \([\d, ]*\) for parameter", "invalid_model",
     {"problem": "wrong_weights"}),
    (r"\[load(?:_safetensors)?\] (?:Invalid header|Failed to open)|\[load_safetensors\]|\[json\.exception\.parse_error",
     "invalid_model", {"problem": "corrupt"}),
    (r"No safetensors found in|config\.json.*(?:not found|No such file)", "invalid_model", {"problem": "missing"}),
    (r"No module named '(?P<module>mlx_lm|mlx)'", "startup_failed", {"problem": "engine_missing"}),
    (r"ember-mlx: the model failed to load", "startup_failed"),
)

#: Lines only MLX writes; what it writes while loading, and once it serves (mlx_lm.server's access log).
SIGNATURE = re.compile(r"\bmlx|\[metal::|\[METAL\]|Starting httpd at|\bmx\.metal|ember-mlx")
LOADING = re.compile(r"\[INFO\] Loading|Fetching \d+ files|load_weights|load_model|Batch eval all weights|"
                     r"ember-mlx: the model")
SERVING = re.compile(r"Starting httpd|prompt_step|generate_step|stream_generate|BatchGenerator|batch_generator|"
                     r"ember-mlx: model loaded|" + S.HTTP_SERVING)

FIXES = {"gpu": ["kv_bits"], "ram": ["kv_bits"]}


class MLX(S.ServerEngine):
    name = NAME
    label = LABELS[NAME]
    roles = Roles()  # mlx_lm.server sizes its context per request; it has no such parameters
    log_patterns = LOG_PATTERNS
    log_signature = SIGNATURE
    loading_lines = LOADING
    serving_lines = SERVING

    def table(self) -> dict[str, S.Arg]:
        return TABLE

    def validate(self, pairs) -> dict[str, object]:
        out = super().validate(pairs)
        if "log_level" in out:
            out["log_level"] = str(out["log_level"]).upper()
        return out

    def prepare(self, spec: ModelSpec, hw: HardwareProfile, values: dict[str, object]) -> Prepared:
        return Prepared(dict(values), None, [])

    def command(self, spec: ModelSpec, values: dict[str, object], host: str, port: int, api_key: str) -> Command:
        python = S.interpreter(NAME)
        program = [python, "-c", BOOTSTRAP, "--model", str(spec.path), "--served-model-name", spec.name,
                   "--host", host, "--port", str(port), *S.flags(values, TABLE)]
        # mlx_lm.server has no API key of its own: the bootstrap checks Ember's (from the environment,
        # never the command line) on every route but /health, so only Ember and its gateway reach it.
        return S.exec_command(NAME, program, {"EMBER_API_KEY": api_key}, health_path="/health")

    def fixes_for(self, kind: Kind, facts: Mapping[str, object], plan: PlanView | None) -> list[Fix]:
        if kind not in (Kind.OOM_LOAD, Kind.KV_CACHE_FULL) or plan_param(plan, "kv_bits"):
            return []
        return [Fix("Quantize the KV cache to 4 bits", {"kv_bits": 4}, "A quarter of the KV cache's memory.")]


ENGINE = MLX()
