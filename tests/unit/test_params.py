"""Dot-notation parameters walked on the real xllamacpp.CommonParams."""
import pytest
import xllamacpp

from engines.running import params as P


def test_keys_come_from_the_installed_xllamacpp():
    schema = P.llamacpp_schema()
    real = {n for n in dir(xllamacpp.CommonParams()) if not n.startswith("_")}
    top = {k.split(".")[0] for k in schema}
    assert top <= real
    for key in ("n_ctx", "n_parallel", "n_gpu_layers", "sampling.top_k", "sampling.temp", "cache_type_k",
                "kv_unified", "cpuparams.n_threads", "speculative.draft.n_max" if "speculative.draft.n_max" in schema
                else "sampling.top_p"):
        assert key in schema, key


def test_apply_sets_nested_fields_on_real_params():
    p = xllamacpp.CommonParams()
    values = P.validate(["sampling.top_k=40", "n_ctx=4096", "n_gpu_layers=20", "cache_type_k=q8_0",
                         "sampling.temp = 0.25", "kv_unified=true", "flash_attn_type=enabled"])
    P.apply(p, values)
    assert p.sampling.top_k == 40 and p.n_ctx == 4096 and p.n_gpu_layers == 20
    assert p.sampling.temp == pytest.approx(0.25)
    assert p.kv_unified is True
    assert int(p.cache_type_k) == int(xllamacpp.ggml_type.GGML_TYPE_Q8_0)
    assert p.flash_attn_type == xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED


@pytest.mark.parametrize("pair,text", [
    ("sampling.top_k=ten", "sampling.top_k expects an integer, got 'ten'"),
    ("sampling.temp=hot", "sampling.temp expects a number, got 'hot'"),
    ("kv_unified=maybe", "kv_unified expects true or false, got 'maybe'"),
    ("n_parallel=0", "n_parallel must be between 1 and 256"),
    ("n_parallel=300", "n_parallel must be between 1 and 256"),
    ("n_ctx=-5", "n_ctx must be 0"),
    ("port=8080", "port cannot be set: Ember picks a free port"),
    ("api_keys=x", "api_keys cannot be set"),
    ("nonsense", "is not of the form key=value"),
])
def test_bad_values_are_explained(pair, text):
    with pytest.raises(P.ParamError) as err:
        P.validate([pair])
    assert text in err.value.message


@pytest.mark.parametrize("key,suggestion", [
    ("sampling.top_kk", "sampling.top_k"),
    ("top_k", "sampling.top_k"),
    ("n_gpu_layer", "n_gpu_layers"),
    ("sampling.temperature", "sampling.temp"),
    ("ctx_size", "n_ctx"),
])
def test_unknown_keys_get_the_nearest_valid_names(key, suggestion):
    with pytest.raises(P.ParamError) as err:
        P.validate({key: "1"})
    assert "is not a llama.cpp parameter" in err.value.message
    assert suggestion in err.value.suggestions


def test_enum_values_suggest_close_choices():
    with pytest.raises(P.ParamError) as err:
        P.validate(["cache_type_k=q8"])
    assert "q8_0" in err.value.suggestions


def test_parse_assignment_keeps_equals_in_values():
    assert P.parse_assignment("chat_template = a=b") == ("chat_template", "a=b")
