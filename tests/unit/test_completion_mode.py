"""Models without a chat template run as text completion, with no other family's template."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engines.chat import completion_mode as cm
from engines.machine import gguf_info
from engines.models import catalog
from engines.models.store import ModelSpec


def _gguf(path, template: str | None):
    """A real (tiny) GGUF file, with or without ``tokenizer.chat_template``."""
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    if template is not None:
        w.add_chat_template(template)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _spec(path, fmt="gguf") -> ModelSpec:
    return ModelSpec(name="m", format=fmt, quantization="F32", path=str(path))


CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


@pytest.mark.parametrize("template,mode", [(CHATML, cm.Mode.CHAT), (None, cm.Mode.COMPLETION),
                                           ("", cm.Mode.COMPLETION)])
def test_a_gguf_is_a_chat_model_only_with_a_template(tmp_path, template, mode):
    decision = cm.mode_of(_spec(_gguf(tmp_path / "m.gguf", template)))
    assert decision.mode is mode
    assert "tokenizer.chat_template" in decision.reason
    assert decision.note == ("" if mode is cm.Mode.CHAT else "continues your text; does not follow instructions")


def test_the_starter_is_a_completion_model(starter_spec):
    decision = cm.mode_of(starter_spec)
    assert decision.mode is cm.Mode.COMPLETION
    assert decision.to_dict() == {"mode": "completion", "reason": decision.reason, "note": cm.COMPLETION_NOTE}


def test_a_changed_file_is_read_again(tmp_path):
    path = _gguf(tmp_path / "m.gguf", None)
    assert cm.gguf_has_chat_template(path) is False
    _gguf(path, CHATML + " " * 64)  # another size: another version of the file
    assert cm.gguf_has_chat_template(path) is True


def test_a_broken_gguf_says_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(gguf_info.GGUFError) as err:
        cm.mode_of(_spec(bad))
    assert err.value.kind == "not_gguf"


@pytest.mark.parametrize("files,mode", [
    ({"tokenizer_config.json": json.dumps({"chat_template": CHATML})}, cm.Mode.CHAT),
    ({"tokenizer_config.json": json.dumps({"chat_template": [{"name": "default", "template": CHATML}]})},
     cm.Mode.CHAT),
    ({"tokenizer_config.json": "{}", "chat_template.jinja": CHATML}, cm.Mode.CHAT),
    ({"tokenizer_config.json": json.dumps({"model_max_length": 2048})}, cm.Mode.COMPLETION),
    ({"tokenizer_config.json": "{not json"}, cm.Mode.COMPLETION),
    ({}, cm.Mode.COMPLETION),
])
def test_a_model_folder_is_a_chat_model_only_with_a_template(tmp_path, files, mode):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert cm.mode_of(_spec(tmp_path, "pytorch")).mode is mode


def test_catalog_models_not_downloaded_are_chat_models():
    spec = catalog.resolve("qwen3-0.6b-q4_k_m")
    spec.path = None
    assert cm.mode_of(spec).mode is cm.Mode.CHAT


@pytest.mark.parametrize("messages,prompt", [
    ([{"role": "user", "content": "The capital of France is "}], "The capital of France is"),
    ([{"role": "system", "content": "A story for children."},
      {"role": "user", "content": "Once upon a time,"}], "A story for children.\n\nOnce upon a time,"),
    ([{"role": "user", "content": "The capital of France is "}, {"role": "assistant", "content": " Paris."},
      {"role": "user", "content": "The capital of Italy is"}],
     "The capital of France is Paris.\n\nThe capital of Italy is"),
    ([{"role": "user", "content": [{"type": "text", "text": "Roses are red,"},
                                   {"type": "image_url", "image_url": {"url": "data:,"}}]}], "Roses are red,"),
    ([{"role": "user", "content": ""}, {"role": "user", "content": "Hi"}], "Hi"),
])
def test_a_conversation_becomes_one_text_to_continue(messages, prompt):
    assert cm.completion_prompt(messages) == prompt


def test_no_template_of_any_family_in_the_prompt():
    prompt = cm.completion_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                   {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}])
    for marker in ("<|im_start|>", "<start_of_turn>", "[INST]", "user:", "assistant:", "<|user|>"):
        assert marker not in prompt


def test_the_request_body_for_v1_completions():
    body = cm.completion_request([{"role": "user", "content": "Once upon a time"}]).body(
        model="starter", max_tokens=256, temperature=None, seed=3)
    assert body == {"prompt": "Once upon a time", "stream": True, "stream_options": {"include_usage": True},
                    "stop": list(cm.COMPLETION_STOPS), "model": "starter", "max_tokens": 256, "seed": 3}
    assert "messages" not in body and cm.COMPLETION_PATH == "/completions"
    assert "stream_options" not in cm.CompletionRequest("x").body(stream=False)


def test_a_chat_model_on_disk_is_found_and_the_starter_is_not_one(tmp_path, starter_spec):
    chat = _spec(_gguf(tmp_path / "chat.gguf", CHATML))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF")
    not_downloaded = catalog.resolve("qwen3-0.6b-q4_k_m")
    not_downloaded.path = None
    assert cm.has_chat_model([starter_spec, _spec(broken), not_downloaded]) is False
    assert cm.has_chat_model([starter_spec, chat]) is True
