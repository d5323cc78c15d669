import shutil

import pytest

from engines.machine import ggml_types, gguf_info
from engines.models import store


def test_reads_the_starter_header_fast(starter_path):
    info = gguf_info.read(starter_path)
    assert info.architecture == "gemma3" and info.block_count == 18
    assert info.context_length == 32768 and info.quantization == "Q4_K_M"
    assert len(info.metadata["tokenizer.ggml.tokens"]) == 262144


@pytest.mark.parametrize("make,kind", [
    (lambda p, src: None, "missing"),
    (lambda p, src: p.write_bytes(b""), "empty"),
    (lambda p, src: p.write_bytes(b"PK\x03\x04 not a model"), "not_gguf"),
    (lambda p, src: p.write_bytes(src.read_bytes()[:1 << 20]), "truncated"),
    (lambda p, src: p.write_bytes(src.read_bytes()[: src.stat().st_size // 2]), "truncated"),
])
def test_broken_files_are_named(tmp_path, starter_path, make, kind):
    p = tmp_path / "m.gguf"
    make(p, starter_path)
    with pytest.raises(gguf_info.GGUFError) as err:
        gguf_info.read(p)
    assert err.value.kind == kind


def test_folder_is_not_a_gguf(tmp_path):
    with pytest.raises(gguf_info.GGUFError, match="folder"):
        gguf_info.read(tmp_path)


def test_add_local_checks_before_accepting(fresh_home, tmp_path, starter_path):
    bad = tmp_path / "half.gguf"
    bad.write_bytes(starter_path.read_bytes()[:5000000])
    with pytest.raises(store.ModelError, match="truncated"):
        store.add_local(bad)
    good = tmp_path / "copy.gguf"
    shutil.copy(starter_path, good)
    spec = store.add_local(good)
    assert spec.name == "copy" and store.resolve_local("copy").path == str(good)
    assert [m.name for m in store.local_models()] == ["starter", "copy"]


def test_tensor_types_match_gguf():
    """Ember's copy of the quant block sizes, checked against the ``gguf`` package it replaces."""
    gguf = pytest.importorskip("gguf")
    theirs = {int(t): (t.name, block, size) for t, (block, size) in gguf.GGML_QUANT_SIZES.items()}
    ours = {t_id: (t.name, t.block_size, t.type_size) for t_id, t in ggml_types.TENSOR_TYPES.items()}
    assert ours == theirs


def test_file_types_match_gguf():
    gguf = pytest.importorskip("gguf")
    assert ggml_types.FILE_TYPES == {int(ft): ft.name for ft in gguf.LlamaFileType}


@pytest.mark.parametrize("shape,ggml_type,expected", [
    ([640, 262144], 12, 640 * 262144 // 256 * 144),  # Q4_K: 256 weights in 144 bytes
    ([4096], 0, 4096 * 4),                            # F32
    ([32, 2], 8, 2 * 34),                             # Q8_0: 32 weights in 34 bytes
    ([10], 4, 0),                                     # 4 (Q4_2) was removed from ggml: unknown, 0
])
def test_tensor_bytes(shape, ggml_type, expected):
    assert ggml_types.tensor_bytes(shape, ggml_type) == expected


def test_quantization_names():
    assert ggml_types.quantization_name(15) == "Q4_K_M"
    assert ggml_types.quantization_name(0) == "ALL_F32"
    assert ggml_types.quantization_name(999) == "type999"


def test_header_sizes_every_tensor_of_the_starter(starter_path):
    """Each tensor's size from the table: together they end exactly at the file's end."""
    info = gguf_info.read(starter_path)
    assert all(t.n_bytes > 0 for t in info.tensors)
    last = max(info.tensors, key=lambda t: t.offset)
    assert info.data_offset + last.offset + last.n_bytes <= info.file_size
    assert info.file_size - (info.data_offset + last.offset + last.n_bytes) < 64  # at most alignment padding
