"""A real Xinference cluster for the tests: supervisor and worker on loopback, started once, stopped cleanly.

Xinference lives in its own venv (``make xinference``: pinned, torch constrained, under
``.cache/xinference-venv``). Started offline with auth on: the supervisor prints a setup
token, the admin is created with it, an API key is made for the key-only cases.

Stopping: TERM to the supervisor, then to the worker (what Xinference handles), then
to every child recorded on the way (their API server and model processes start
their own sessions, so killing the parents alone leaves them running), KILL for
whatever still stands.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "xinference-venv"
START_TIMEOUT = 240.0   # seconds for each of supervisor and worker (about 20 s each when the machine is idle)
STOP_TIMEOUT = 20.0
ENV = {"HF_HUB_OFFLINE": "1", "XINFERENCE_MODEL_SRC": "huggingface", "XINFERENCE_DISABLE_METRICS": "1",
       "XINFERENCE_ENABLE_VIRTUAL_ENV": "0"}
#: the console scripts' shebangs name the path the venv was made at; run their functions with its python instead
LAUNCHER = "import sys; from xinference.deploy.cmdline import {0}; sys.argv[0] = 'xinference-{0}'; sys.exit({0}())"


class Unavailable(RuntimeError):
    """Xinference cannot be installed here (the reason is pip's own last lines)."""


@dataclass
class RealCluster:
    url: str
    user: str
    password: str
    api_key: str
    home: Path
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    children: dict[int, psutil.Process] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def record_children(self) -> None:
        """Every process the supervisor and worker started so far (models included)."""
        for p in self.procs.values():
            try:
                for child in psutil.Process(p.pid).children(recursive=True):
                    self.children.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                continue

    def log_tail(self, n: int = 30) -> str:
        out = []
        for name, path in self.logs.items():
            try:
                lines = path.read_text(errors="replace").splitlines()[-n:]
            except OSError:
                lines = []
            out.append(f"--- {name} ({path}) ---\n" + "\n".join(lines))
        return "\n".join(out)


def venv_python() -> Path:
    """The venv's python, installed by ``make xinference`` now if it is not yet. Raises Unavailable."""
    venv = VENV.resolve()
    if not (venv / ".installed").exists():
        subprocess.run(["make", "-s", "xinference"], cwd=ROOT, check=False)
    if not (venv / ".installed").exists():
        failed = venv / "install-failed.txt"
        reason = failed.read_text(errors="replace").strip() if failed.exists() else "make xinference did not finish"
        raise Unavailable(f"Xinference could not be installed into {VENV}: {reason}")
    return venv / "bin" / "python"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, procs: list[subprocess.Popen], cluster: RealCluster):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: a process exited with {p.returncode}\n{cluster.log_tail()}")
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} took more than {timeout:.0f} s\n{cluster.log_tail()}")


def start(workdir: Path) -> RealCluster:
    """Supervisor, then worker, then the admin and an API key. Raises Unavailable / RuntimeError."""
    python = str(venv_python())
    port, sup_port, worker_port = _free_port(), _free_port(), _free_port()
    home = workdir / "xinference-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ENV, "XINFERENCE_HOME": str(home)}
    env.pop("PYTHONPATH", None)
    url = f"http://127.0.0.1:{port}"
    cluster = RealCluster(url, "admin", "ember-" + secrets.token_urlsafe(9), "", home,
                          {"supervisor": workdir / "supervisor.log", "worker": workdir / "worker.log"})
    try:
        t0 = time.monotonic()
        with open(cluster.logs["supervisor"], "wb") as out:
            cluster.procs["supervisor"] = subprocess.Popen(
                [python, "-c", LAUNCHER.format("supervisor"), "-H", "127.0.0.1", "--port", str(port),
                 "--supervisor-port", str(sup_port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        _wait("the supervisor", lambda: httpx.get(url + "/status", timeout=2).status_code == 200, START_TIMEOUT,
              [cluster.procs["supervisor"]], cluster)
        cluster.timings["supervisor_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        with open(cluster.logs["worker"], "wb") as out:
            cluster.procs["worker"] = subprocess.Popen(
                [python, "-c", LAUNCHER.format("worker"), "-e", url, "-H", "127.0.0.1", "--worker-port",
                 str(worker_port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        _wait("the worker", lambda: httpx.get(url + "/status", timeout=2).json().get("workers"), START_TIMEOUT,
              list(cluster.procs.values()), cluster)
        cluster.timings["worker_s"] = time.monotonic() - t1
        token = _wait("the setup token", lambda: re.search(r"Setup token: (\S+)",
                                                           cluster.logs["supervisor"].read_text(errors="replace")),
                      30, list(cluster.procs.values()), cluster).group(1)
        r = httpx.post(url + "/v1/admin/setup", json={"setup_token": token, "username": cluster.user,
                                                      "password": cluster.password}, timeout=30)
        r.raise_for_status()
        jwt = httpx.post(url + "/token", json={"username": cluster.user, "password": cluster.password},
                         timeout=30).json()["access_token"]
        cluster.api_key = httpx.post(url + "/v1/admin/keys", json={"name": "ember-tests"}, timeout=30,
                                     headers={"Authorization": f"Bearer {jwt}"}).json()["key"]
        cluster.record_children()
        return cluster
    except BaseException:
        stop(cluster)
        raise


def _term(p: psutil.Process | subprocess.Popen, timeout: float) -> None:
    try:
        p.terminate()
        p.wait(timeout=timeout)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return
    except (psutil.TimeoutExpired, subprocess.TimeoutExpired):
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass


def stop(cluster: RealCluster) -> None:
    """TERM the supervisor, then the worker, then every recorded child still running."""
    cluster.record_children()
    for name in ("supervisor", "worker"):
        p = cluster.procs.get(name)
        if p is not None and p.poll() is None:
            _term(p, STOP_TIMEOUT)
    alive = []
    for c in cluster.children.values():
        try:
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE:
                alive.append(c)
        except psutil.NoSuchProcess:
            continue
    for c in alive:
        try:
            c.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(alive, timeout=5)
    for c in still:
        try:
            c.kill()
        except psutil.NoSuchProcess:
            pass
