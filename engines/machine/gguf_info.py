"""A fast reader of GGUF headers: metadata and tensor table, never the weights.

``gguf.GGUFReader`` parses every token of the vocabulary into Python objects
(10 s for the 262k-token starter model on this machine); Ember needs the header
before every launch and for every model in the list, so this reader skips large
arrays and keeps only their length. It also spots the broken files that make
llama.cpp fail with a generic error: missing, empty, wrong magic, truncated.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from engines.machine import ggml_types

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY = 256  # arrays longer than this are kept as their length only


class GGUFError(ValueError):
    """The file is not a usable GGUF model; ``problem`` says how, for people."""

    def __init__(self, path: Path, problem: str, kind: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem, self.kind = path, problem, kind


class SizedArray:
    """Stands for a long array whose items were skipped; ``len()`` still works."""

    def __init__(self, n: int, item_type: int):
        self.n, self.item_type = n, item_type

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"<array of {self.n}>"


@dataclass
class TensorInfo:
    name: str
    shape: list[int]
    type: int
    offset: int
    n_bytes: int


@dataclass
class GGUFInfo:
    path: Path
    file_size: int
    metadata: dict[str, object]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default=None):
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def block_count(self) -> int:
        return int(self.arch_value("block_count", 0) or 0)

    @property
    def context_length(self) -> int | None:
        v = self.arch_value("context_length")
        return int(v) if v is not None else None

    @property
    def quantization(self) -> str:
        ft = self.metadata.get("general.file_type")
        if ft is None:
            return "unknown"
        try:
            return ggml_types.quantization_name(int(ft))
        except ValueError:
            return f"type{ft}"

    @property
    def parameters(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)

    @property
    def has_vision(self) -> bool:
        return any(t.name.startswith(("v.", "mm.")) for t in self.tensors)

    def xllamacpp_dump(self) -> dict:
        """The dict shape of ``xllamacpp.memory.dump_metadata_json``."""
        return {
            "filename": str(self.path),
            "metadata": {k: {"value": v} for k, v in self.metadata.items()},
            "tensors": {t.name: {"shape": t.shape, "type": t.type, "offset": t.offset, "n_bytes": t.n_bytes}
                        for t in self.tensors},
        }


class _Buf:
    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise GGUFError(self.path, "the file ends inside its header: it is truncated (an incomplete download?)",
                            "truncated")
        return b

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise GGUFError(self.path, "the header is corrupted (impossible string length)", "corrupt")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.unpack("<I"), self.unpack("<Q")
            if n <= _KEEP_ARRAY:
                return [self.value(itype) for _ in range(n)]
            if itype in _SCALARS:
                self.f.seek(struct.calcsize(_SCALARS[itype]) * n, os.SEEK_CUR)
            elif itype == _STRING:
                for _ in range(n):
                    self.f.seek(self.unpack("<Q"), os.SEEK_CUR)
            else:
                for _ in range(n):
                    self.value(itype)
            return SizedArray(n, itype)
        raise GGUFError(self.path, f"the header is corrupted (unknown value type {vtype})", "corrupt")


def read(path: str | os.PathLike, check_data: bool = True) -> GGUFInfo:
    """Read a GGUF header; raise :class:`GGUFError` naming what is wrong."""
    path = Path(path)
    if not path.exists():
        raise GGUFError(path, "the file does not exist", "missing")
    if path.is_dir():
        raise GGUFError(path, "this is a folder, not a GGUF file", "not_gguf")
    size = path.stat().st_size
    if size == 0:
        raise GGUFError(path, "the file is empty", "empty")
    with open(path, "rb") as f:
        buf = _Buf(f, path)
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise GGUFError(path, f"this is not a GGUF model file (it starts with {magic!r}, not b'GGUF')",
                            "not_gguf")
        version = buf.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(path, f"GGUF version {version} is not supported", "unsupported")
        n_tensors, n_kv = buf.unpack("<Q"), buf.unpack("<Q")
        meta: dict[str, object] = {"GGUF.version": version}
        for _ in range(n_kv):
            key = buf.string()
            meta[key] = buf.value(buf.unpack("<I"))
        tensors = []
        for _ in range(n_tensors):
            name = buf.string()
            dims = [buf.unpack("<Q") for _ in range(buf.unpack("<I"))]
            ttype, offset = buf.unpack("<I"), buf.unpack("<Q")
            tensors.append(TensorInfo(name, dims, ttype, offset, ggml_types.tensor_bytes(dims, ttype)))
        align = int(meta.get("general.alignment", 32) or 32)
        pos = f.tell()
        data_offset = pos + (-pos % align)
    info = GGUFInfo(path, size, meta, tensors, data_offset)
    if check_data and tensors:
        end = max(data_offset + t.offset + t.n_bytes for t in tensors)
        if end > size:
            raise GGUFError(path, f"the file is truncated: its tensors need {end:,} bytes but it has {size:,} "
                            "(an incomplete download or copy)", "truncated")
    return info
