"""Small helpers shared by the test folders."""
from __future__ import annotations

import os
import time
from pathlib import Path

from engines.running import supervisor

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hardware"  # hardware profiles (fakes with real shapes)


def screenshot_dir() -> Path:
    """Where the suite writes its screenshots: EMBER_SCREENSHOTS, default screenshots/ (the README's)."""
    path = Path(os.environ.get("EMBER_SCREENSHOTS", ROOT / "screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` (for another process or the X server) until it returns something true."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class StandInProcess:
    """What EngineManager uses of supervisor.EngineProcess: for tests of the manager's bookkeeping
    and events without an engine (real launches are in tests/integration and tests/desktop)."""

    base_url = "http://127.0.0.1:1"
    api_key = "key"

    def __init__(self):
        self.running = True

    def watch(self, on_exit) -> None:
        """A stand-in never ends by itself (crashes are tested with real engines)."""
        return None

    def stop(self) -> supervisor.Stop:
        self.running = False
        return supervisor.Stop.OK


# -- the actions a diagnosis can offer, read from the source -----------------------------------------

def fix_actions_in_source() -> dict[str, list[str]]:
    """Every ``action=`` of a ``Fix(...)`` written in engines/, by the action it names: "use_engine:{e}"
    (an f-string) is expanded to each engine, another f-string "name:{…}" listed as "name:*"; a Fix
    without an action is listed as "change" (it has parameter changes) or "advice" (an empty ``{}``).
    Values: where each is written (file:line), so a failure names the line."""
    import ast
    from engines.running.backends import ENGINES
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "engines").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Fix"):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            action = next((k.value for k in node.keywords if k.arg == "action"), None)
            if action is None and len(node.args) >= 4:
                action = node.args[3]
            if action is None or isinstance(action, ast.Constant) and action.value is None:
                changes = next((k.value for k in node.keywords if k.arg == "changes"),
                               node.args[1] if len(node.args) > 1 else None)
                empty = changes is None or isinstance(changes, ast.Dict) and not changes.keys
                found.setdefault("advice" if empty else "change", []).append(where)
            elif isinstance(action, ast.Constant) and isinstance(action.value, str):
                found.setdefault(action.value, []).append(where)
            elif isinstance(action, ast.JoinedStr):
                prefix = "".join(v.value for v in action.values if isinstance(v, ast.Constant))
                if prefix == "use_engine:":
                    for e in ENGINES:
                        found.setdefault(prefix + e, []).append(where)
                elif prefix.endswith(":"):
                    found.setdefault(prefix + "*", []).append(where)
                else:
                    found.setdefault(f"<f-string {prefix}…>", []).append(where)
            else:
                found.setdefault(f"<computed {ast.unparse(action)}>", []).append(where)
    return found


def emitted_fixes() -> list:
    """One Fix per action the diagnosis module can emit (:func:`fix_actions_in_source`), an argument filled in
    where the source computes it."""
    from engines.diagnosis.types import Fix
    fixes = []
    for name in fix_actions_in_source():
        if name == "change":
            fixes.append(Fix("Lower the context to 1,024 tokens", {"n_ctx": 1024}, ""))
        elif name == "advice":
            fixes.append(Fix("Update the NVIDIA driver", {}, "Install the newest driver for your GPU."))
        else:
            label = {"install": "Install llama.cpp"}.get(name, f"Do {name}")
            note = {"install": "pip install xllamacpp",
                    "settings": "If the model is only slow here, raise stall_timeout_seconds."}.get(name, "")
            fixes.append(Fix(label, {}, note, action=name.replace(":*", ":sampling.top_k")))
    return fixes
