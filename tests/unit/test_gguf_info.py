import shutil

import pytest

from engines.machine import gguf_info
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
