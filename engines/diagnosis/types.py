"""What a diagnosis is: its kind, its fixes, the log lines that name it, and its words.

The one module both sides import: the engines' backends (``engines.running.backends``)
write their log tables and fixes with these types, and the diagnosis logic
(:mod:`engines.diagnosis.diagnose`) builds :class:`Diagnosis` objects from them.
It imports nothing of Ember's, so neither side closes a loop through it.
"""
from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping


class Kind(str, enum.Enum):
    CONTEXT_EXCEEDED = "context_exceeded"
    KV_CACHE_FULL = "kv_cache_full"
    IMAGE_FAILED = "image_failed"
    OOM_LOAD = "oom_load"
    GPU_UNUSABLE = "gpu_unusable"   # a GPU is there, but the engine cannot use it (driver, visibility, CPU build)
    REPLY_CUT_SHORT = "reply_cut_short"
    INVALID_MODEL = "invalid_model"
    MODEL_NOT_DOWNLOADED = "model_not_downloaded"
    MODEL_NOT_RUNNING = "model_not_running"   # a server (a cluster) has no running model of that name
    ENGINE_CRASHED = "engine_crashed"
    ENGINE_STALLED = "engine_stalled"
    ENGINE_MISSING = "engine_missing"
    NOT_SUPPORTED = "not_supported"
    PORT_IN_USE = "port_in_use"
    STARTUP_FAILED = "startup_failed"
    AUTH_FAILED = "auth_failed"
    UNREACHABLE = "unreachable"
    CONNECTION_LOST = "connection_lost"
    BAD_PARAMETER = "bad_parameter"
    SERVER_ERROR = "server_error"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


@dataclass
class Fix:
    """One way out: parameter changes for a relaunch, or an action for the app."""

    label: str
    changes: dict[str, object] = field(default_factory=dict)
    note: str = ""
    action: str | None = None  # relaunch | new_conversation | choose_model | redownload | install | edit_endpoint | ...

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cli_hint(self) -> str:
        return " ".join(f"--set {k}={_cli_value(v)}" for k, v in self.changes.items())


@dataclass
class Diagnosis:
    kind: Kind
    title: str
    explanation: str
    facts: dict[str, object] = field(default_factory=dict)
    fixes: list[Fix] = field(default_factory=list)
    log_path: str | None = None
    log_tail: list[str] = field(default_factory=list)

    @property
    def primary_fix(self) -> Fix | None:
        return self.fixes[0] if self.fixes else None

    def to_dict(self) -> dict:
        return {"kind": str(self.kind), "title": self.title, "explanation": self.explanation,
                "facts": dict(self.facts), "fixes": [f.to_dict() for f in self.fixes],
                "log_path": self.log_path, "log_tail": list(self.log_tail)}

    def render_text(self, tail: int = 10) -> str:
        out = [f"Error: {self.title}", "", _indent(self.explanation, "  ")]
        if self.fixes:
            out += ["", "What you can do:"]
            for i, f in enumerate(self.fixes, 1):
                line = f"  {i}. {f.label}"
                if f.changes:
                    line += f"   ({f.cli_hint})"
                out.append(line)
                if f.note:
                    out.append(_indent(f.note, "     "))
        if self.log_path:
            out += ["", f"Engine log: {self.log_path}"]
        if self.log_tail and tail:
            out += ["  last lines:"] + ["    " + l for l in self.log_tail[-tail:]]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render_text()


@dataclass(frozen=True)
class LogPattern:
    """One known log line (or error message): the failure it names and the facts it carries.

    ``regex`` is searched in one line; its named groups become facts, merged over ``facts``
    (``(?P<alloc_mib>[\\d.]+) MiB`` -> ``{"alloc_mib": "1234.5"}``).
    """

    regex: re.Pattern
    kind: Kind
    facts: Mapping[str, object] = field(default_factory=dict)

    def match(self, line: str) -> dict[str, object] | None:
        """The facts of ``line`` when this pattern names it, else None."""
        m = self.regex.search(line)
        if m is None:
            return None
        facts = dict(self.facts)
        facts.update({k: v for k, v in m.groupdict().items() if v is not None})
        return facts


def log_table(*entries: tuple) -> tuple[LogPattern, ...]:
    """A table of :class:`LogPattern` from ``(regex, kind)`` or ``(regex, kind, facts)`` rows.

    Regexes given as text are compiled case-insensitively; ``kind`` must be a :class:`Kind` value
    (a typo fails at import, not at the user's first error). Order matters: specific first.
    """
    out = []
    for regex, kind, *rest in entries:
        rx = regex if isinstance(regex, re.Pattern) else re.compile(regex, re.IGNORECASE)
        out.append(LogPattern(rx, Kind(kind), dict(rest[0]) if rest and rest[0] else {}))
    return tuple(out)


def count(x) -> str:
    """``12,345``: token counts and layers as people read them."""
    return f"{int(x):,}"


def _cli_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + l if l else l for l in text.splitlines())
