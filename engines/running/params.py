"""Engine parameters as ``key=value`` pairs, with nested keys in dot notation.

The seed says llama.cpp's parameters are ``common_params`` fields, nested ones
written ``sampling.top_k``. The valid keys are read from the installed
``xllamacpp.CommonParams`` by walking its real fields, so a new xllamacpp
brings its new parameters without a hand-kept list here.
"""
from __future__ import annotations

import difflib
import enum
import math
import functools
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Keys Ember sets itself for every launch; users change them elsewhere.
EMBER_OWNED = {
    "model.path": "the model is chosen by name or path",
    "port": "Ember picks a free port",
    "hostnames": "engines listen on 127.0.0.1 only",
    "api_keys": "Ember creates a fresh API key for each launch",
    "model_alias": "the served model id is the model's name in Ember (what `ember serve` prints)",
    "api_prefix": "Ember reaches the engine at /v1 and asks /health whether it is ready; a prefix would hide both",
    "ssl_file_key": "the engine listens on 127.0.0.1 only and Ember talks to it over plain HTTP",
    "ssl_file_cert": "the engine listens on 127.0.0.1 only and Ember talks to it over plain HTTP",
    "reuse_port": "Ember picks a free port that no other program shares",
}

#: A C ``int`` (llama.cpp's fields): a bigger value wraps around inside the engine and crashes it.
INT32 = (-2**31, 2**31 - 1)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class ParamSpec:
    key: str
    type: str  # "int" | "float" | "bool" | "str" | "enum" | "list" | "set"
    default: object = None
    choices: tuple[str, ...] = ()
    item_type: str = "str"

    @property
    def expects(self) -> str:
        return {
            "int": "an integer", "float": "a number", "bool": "true or false", "str": "text",
            "enum": "one of " + ", ".join(self.choices), "list": f"a comma-separated list of {self.item_type}s",
            "set": "a comma-separated list",
        }[self.type]


class ParamError(ValueError):
    """A parameter that cannot be used, with what would be right instead."""

    def __init__(self, key: str, problem: str, value: object = None, suggestions: tuple[str, ...] = (),
                 nearest: object = None):
        self.key, self.problem, self.value, self.suggestions = key, problem, value, tuple(suggestions)
        self.nearest = nearest  # the closest valid value, when the key has a range (see RANGES)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.key} {self.problem}" if self.key else self.problem
        if self.suggestions:
            text += "; did you mean " + " or ".join(self.suggestions) + "?"
        return text


def _enum_prefix(e: type[enum.Enum]) -> str:
    names = list(e.__members__)
    prefix = names[0] if len(names) > 1 else ""
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    return prefix[: prefix.rfind("_") + 1] if prefix else ""


def _enum_choices(e: type[enum.Enum]) -> dict[str, enum.Enum]:
    prefix = _enum_prefix(e)
    return {name[len(prefix):].lower(): member for name, member in e.__members__.items()
            if not name.endswith("_COUNT")}


def _is_struct(value: object) -> bool:
    return type(value).__module__.startswith("xllamacpp") and not isinstance(value, enum.Enum) \
        and not isinstance(value, (int, float, str, bool, list, set))


def _walk(obj: object, prefix: str, out: dict[str, ParamSpec], depth: int = 0) -> None:
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception:
            continue
        if callable(value) and not isinstance(value, enum.Enum):
            continue
        key = prefix + name
        if _is_struct(value):
            if depth < 3:
                _walk(value, key + ".", out, depth + 1)
            continue
        if isinstance(value, enum.Enum):
            choices = _enum_choices(type(value))
            default = next((c for c, m in choices.items() if m == value), value.name)
            spec = ParamSpec(key, "enum", default, tuple(choices))
        elif isinstance(value, bool):
            spec = ParamSpec(key, "bool", value)
        elif isinstance(value, int):
            spec = ParamSpec(key, "int", value)
        elif isinstance(value, float):
            spec = ParamSpec(key, "float", value)
        elif isinstance(value, str):
            spec = ParamSpec(key, "str", value)
        elif isinstance(value, list):
            item = type(value[0]).__name__ if value and isinstance(value[0], (int, float, str)) else "str"
            if value and not isinstance(value[0], (int, float, str)):
                continue  # lists of structs (LoRA adapters...) are not key=value material
            spec = ParamSpec(key, "list", list(value), item_type=item)
        elif isinstance(value, set):
            spec = ParamSpec(key, "set", sorted(value))
        else:
            continue
        out[key] = spec


@functools.lru_cache(maxsize=1)
def llamacpp_schema() -> dict[str, ParamSpec]:
    """Every settable key of the installed xllamacpp's CommonParams."""
    import xllamacpp  # heavy (loads llama.cpp's library) and needed only when llama.cpp is asked about

    out: dict[str, ParamSpec] = {}
    _walk(xllamacpp.CommonParams(), "", out)
    # Enum fields whose current value is a plain int (set once, read back as int):
    enum_fields = {"cache_type_k": xllamacpp.ggml_type, "cache_type_v": xllamacpp.ggml_type}
    for key, e in enum_fields.items():
        if key in out and out[key].type != "enum":
            choices = _enum_choices(e)
            default = next((c for c, m in choices.items() if m.value == out[key].default), out[key].default)
            out[key] = ParamSpec(key, "enum", default, tuple(choices))
    return out


#: llama-server command-line names people already know -> the CommonParams field (suggested, not accepted).
CLI_ALIASES = {
    "ctx_size": "n_ctx", "c": "n_ctx", "ngl": "n_gpu_layers", "gpu_layers": "n_gpu_layers",
    "parallel": "n_parallel", "np": "n_parallel", "batch_size": "n_batch", "ubatch_size": "n_ubatch",
    "threads": "cpuparams.n_threads", "t": "cpuparams.n_threads", "temperature": "sampling.temp",
    "temp": "sampling.temp", "repeat_penalty": "sampling.penalty_repeat", "seed": "sampling.seed",
    "flash_attn": "flash_attn_type", "fa": "flash_attn_type", "predict": "n_predict", "n": "n_predict",
}


def suggest(key: str, keys: list[str] | tuple[str, ...], n: int = 3) -> tuple[str, ...]:
    """Nearest valid keys: llama-server's own flag names, the whole key, then the last part alone."""
    alias = CLI_ALIASES.get(key.lstrip("-").replace("-", "_"))
    if alias in keys:
        return (alias,)
    found = difflib.get_close_matches(key, keys, n=n, cutoff=0.75)
    leaf = key.rsplit(".", 1)[-1]
    for k in keys:
        if k.rsplit(".", 1)[-1] == leaf and k not in found:
            found.append(k)
    if not found:
        leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
        found = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=n, cutoff=0.7)]
    return tuple(found[:n])


def _coerce_scalar(kind: str, raw: object, spec: ParamSpec):
    text = str(raw).strip()
    if kind == "int":
        if isinstance(raw, bool):
            raise ValueError
        if isinstance(raw, int):
            return raw
        return int(text.replace("_", ""), 0) if text.lower().startswith(("0x", "0o", "0b")) else int(text)
    if kind == "float":
        return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else float(text)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError
    if kind == "str":
        return text
    raise ValueError


def coerce(spec: ParamSpec, raw: object):
    """Convert ``raw`` (usually text the user typed) to the field's type."""
    try:
        if spec.type == "enum":
            text = str(raw).strip().lower()
            if text in spec.choices:
                return text
            close = difflib.get_close_matches(text, spec.choices, n=3, cutoff=0.6)
            raise ParamError(spec.key, f"expects {spec.expects}, got {str(raw)!r}", raw, tuple(close))
        if spec.type in ("list", "set"):
            items = raw if isinstance(raw, (list, tuple, set)) else [s for s in str(raw).split(",") if s.strip()]
            return [_coerce_scalar(spec.item_type if spec.type == "list" else "str", i, spec) for i in items]
        return _coerce_scalar(spec.type, raw, spec)
    except ParamError:
        raise
    except (ValueError, TypeError):
        raise ParamError(spec.key, f"expects {spec.expects}, got {str(raw)!r}", raw) from None


def parse_assignment(text: str) -> tuple[str, str]:
    """``"sampling.top_k = 40"`` -> ``("sampling.top_k", "40")``."""
    if "=" not in text:
        raise ParamError("", f"{text!r} is not of the form key=value (for example sampling.top_k=40)", text)
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ParamError("", f"{text!r} has no key before '='", text)
    return key, value.strip()


@dataclass(frozen=True)
class Bounds:
    """The valid range of a whole-number parameter, and why values outside it are refused.

    ``gap``: values strictly between ``low`` and ``gap`` are refused too (a context of 0 means the
    model's own, while 1 crashes llama.cpp); their nearest valid value is ``gap``."""

    low: int
    high: int | None
    expects: str            # the valid values in words
    below: str = ""         # why a value under ``low`` would break the engine
    above: str = ""
    gap: int | None = None
    in_gap: str = ""
    over: int | None = None  # the value offered for one above ``high``, when not ``high`` itself

    def problem(self, value: int) -> str | None:
        if value < self.low:
            return f"must be {self.expects}, got {value}{self.below}"
        if self.high is not None and value > self.high:
            return f"must be {self.expects}, got {value:,}{self.above}"
        if self.gap is not None and self.low < value < self.gap:
            return f"must be {self.expects}, got {value}{self.in_gap}"
        return None

    def nearest(self, value: int) -> int:
        if self.gap is not None and self.low < value < self.gap:
            return self.gap
        if self.over is not None and self.high is not None and value > self.high:
            return self.over
        return max(self.low, value) if self.high is None else min(self.high, max(self.low, value))


#: Values that start a broken engine are refused before launch (see FACTS); a refusal
#: carries the nearest valid value, which the diagnosis offers as its fix.
RANGES = {
    "n_parallel": Bounds(1, 256, "between 1 and 256", " (with no slots every request would wait forever)",
                         " (llama.cpp allows at most 256 sequences)"),
    "n_ctx": Bounds(0, INT32[1], f"0 (the model's own context) or from 256 to {INT32[1]:,}", "",
                    " (a larger number wraps around inside llama.cpp and crashes it)", gap=256,
                    in_gap=" (llama.cpp rounds a context up to 256 tokens, and one smaller than its batch "
                           "crashes it)", over=0),
    "n_gpu_layers": Bounds(-1, INT32[1], "-1 (auto) or a number of layers"),
}
#: Any other whole number llama.cpp takes is a C int.
ANY_INT = Bounds(INT32[0], INT32[1], f"between {INT32[0]:,} and {INT32[1]:,}", "",
                 " (it does not fit llama.cpp's whole numbers and would wrap around)")


def require_finite(key: str, value) -> None:
    """A float (or each float of a list) is a number: never NaN or infinity, for any engine."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            raise ParamError(key, f"must be a finite number, got {v}", v)


def _range_checks(key: str, value) -> None:
    """Whole numbers within their range (a C int at most); floats finite (NaN reaches the engine as
    text JSON cannot carry, and a NaN temperature samples garbage)."""
    require_finite(key, value)
    for v in value if isinstance(value, list) else [value]:
        if not isinstance(v, int) or isinstance(v, bool):
            continue
        bounds = RANGES.get(key, ANY_INT)
        problem = bounds.problem(v)
        if problem:
            raise ParamError(key, problem, v, nearest=bounds.nearest(v))


def validate(pairs: dict[str, object] | list[str], schema: dict[str, ParamSpec] | None = None) -> dict[str, object]:
    """Check and convert ``key=value`` pairs; raise :class:`ParamError` on the first bad one."""
    schema = schema if schema is not None else llamacpp_schema()
    if isinstance(pairs, (list, tuple)):
        pairs = dict(parse_assignment(p) for p in pairs)
    out: dict[str, object] = {}
    for key, raw in pairs.items():
        if key in EMBER_OWNED:
            raise ParamError(key, f"cannot be set: {EMBER_OWNED[key]}", raw)
        spec = schema.get(key)
        if spec is None:
            raise ParamError(key, "is not a llama.cpp parameter", raw, suggest(key, tuple(schema)))
        value = coerce(spec, raw)
        _range_checks(key, value)
        if schema is llamacpp_schema():
            _fits_field(spec, value)
        out[key] = value
    return out


@functools.lru_cache(maxsize=1)
def _scratch() -> object:
    import xllamacpp  # heavy; only asked once a llama.cpp value is checked
    return xllamacpp.CommonParams()


def _fits_field(spec: ParamSpec, value: object) -> None:
    """The value fits llama.cpp's own field (some are unsigned or 16-bit, narrower than a C int): it is set
    on a scratch ``CommonParams``, so a value the engine child could not take never starts one (issue 14)."""
    try:
        apply(_scratch(), {spec.key: value})
    except (OverflowError, TypeError, ValueError, KeyError) as exc:
        raise ParamError(spec.key, f"does not fit llama.cpp's field for it ({exc})", value) from None


def apply(target: object, values: dict[str, object], schema: dict[str, ParamSpec] | None = None) -> None:
    """Set validated values on a real ``xllamacpp.CommonParams``, walking nested fields."""
    import xllamacpp  # heavy; only the llama.cpp worker applies values

    schema = schema if schema is not None else llamacpp_schema()
    for key, value in values.items():
        spec = schema[key]
        *path, leaf = key.split(".")
        obj = target
        for part in path:
            obj = getattr(obj, part)
        if spec.type == "enum":
            enum_type = type(getattr(obj, leaf)) if isinstance(getattr(obj, leaf), enum.Enum) else xllamacpp.ggml_type
            value = _enum_choices(enum_type)[value]
        elif spec.type == "set":
            value = set(value)
        elif spec.type == "list" and spec.item_type == "float" and len(value) < len(spec.default or []):
            value = list(value) + [0.0] * (len(spec.default) - len(value))  # fixed-size C arrays (tensor_split)
        setattr(obj, leaf, value)
