"""The core's import rules, read from the source: the layout of engines/ is the architecture.

- The core never imports Qt or the desktop app (it runs in the CLI, in engine
  child processes and under other interpreters).
- No import circle among engines/ modules, counting imports inside functions:
  a function-level import that closes a loop is still a loop, only hidden.
- Project imports sit at module top, where a reader sees a module's
  dependencies; a lazy one is allowed only in LAZY_ALLOWED, with its reason as
  a comment on the line. Importing a project module by string is an import too.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ROOT / "engines"

#: "engines/file.py: engines.imported.module" -> why it must load lazily (the line says so in a comment too).
LAZY_ALLOWED: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    """One project import found in the source."""

    importer: str       # module name, e.g. engines.models.catalog
    target: str         # the project module it loads
    file: Path
    line: int
    in_function: bool

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_modules() -> dict[str, Path]:
    """Every module of the core, by dotted name."""
    return {_module_name(p): p for p in sorted(ENGINES.rglob("*.py"))}


def _targets(node: ast.AST, package: str, modules: dict[str, Path]) -> list[str]:
    """The project modules an import statement (or ``importlib.import_module("engines...")``) loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        return [t for t in found if t in modules]
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
        arg = node.args[0] if node.args else None
        text = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else \
            arg.values[0].value if isinstance(arg, ast.JoinedStr) and arg.values and \
            isinstance(arg.values[0], ast.Constant) else ""
        if text.startswith("engines."):
            return [text if text in modules else text.rsplit(".", 1)[0] + ".<by string>"]
    return []


def project_imports() -> list[Import]:
    """Every project import in engines/, top-level and inside functions."""
    modules = core_modules()
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        in_func = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
        for node in ast.walk(tree):
            for target in _targets(node, package, modules):
                if target != name:
                    found.append(Import(name, target, path, node.lineno, id(node) in in_func))
    return found


def import_cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


# -- the rules --------------------------------------------------------------------------------------------

_QT_BLOCKED = r'''
import importlib, sys
for qt in ("PySide6", "PySide2", "PyQt5", "PyQt6", "shiboken6"):
    sys.modules[qt] = None  # importing any of them now raises ImportError
problems = []
for name in sys.argv[1:]:
    before = set(sys.modules)
    try:
        importlib.import_module(name)
    except ImportError as exc:
        problems.append(f"{name}: {exc}")
        continue
    gui = sorted(m for m in set(sys.modules) - before if m == "desktop" or m.startswith("desktop."))
    if gui:
        problems.append(f"{name} imports {', '.join(gui)}")
print("\n".join(problems))
sys.exit(1 if problems else 0)
'''


def test_core_never_imports_qt_or_the_desktop():
    """Each engines/ module imports with Qt blocked and pulls in nothing from desktop/."""
    names = sorted(core_modules())
    assert "engines.diagnosis.diagnose" in names and "engines.cli" in names
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _QT_BLOCKED, *names], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def test_no_import_cycles_in_the_core():
    cycles = import_cycles(project_imports())
    assert not cycles, "import circles (imports inside functions count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_project_imports_sit_at_module_top():
    lazy = [i for i in project_imports() if i.in_function or i.target.endswith("<by string>")]
    unexplained = []
    for i in lazy:
        line = i.file.read_text(encoding="utf-8").splitlines()[i.line - 1]
        if f"{i.file.relative_to(ROOT)}: {i.target}" not in LAZY_ALLOWED or "#" not in line:
            unexplained.append(f"{i.where} {i.importer} -> {i.target}")
    assert not unexplained, "project imports inside functions or by string:\n" + "\n".join(unexplained)


# -- the checker itself, on small trees ------------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.fixture
def fake_core(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "ENGINES", tmp_path / "engines")
    return tmp_path


def test_a_function_level_import_that_closes_a_loop_is_a_cycle(fake_core):
    _tree(fake_core, {"engines/__init__.py": "", "engines/pkg/__init__.py": "",
                      "engines/pkg/a.py": "from engines.pkg import b\n",
                      "engines/pkg/b.py": "def f():\n    from . import a  # hidden\n",
                      "engines/pkg/c.py": "from engines.pkg.a import X\n"})
    imports = project_imports()
    assert [(i.importer, i.target, i.in_function) for i in imports if i.importer == "engines.pkg.b"] == [
        ("engines.pkg.b", "engines.pkg.a", True)]
    assert import_cycles(imports) == [["engines.pkg.a", "engines.pkg.b"]]


def test_imports_by_string_are_found(fake_core):
    _tree(fake_core, {"engines/__init__.py": "", "engines/x.py": "import importlib\n"
                      "def load(n):\n    return importlib.import_module(f'engines.backends.{n}')\n"})
    [found] = project_imports()
    assert found.target == "engines.backends.<by string>" and found.in_function
