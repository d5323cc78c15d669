"""The first-run facts the chat window's welcome card is built on: is a chat model on disk, does the Hub answer."""
from __future__ import annotations

from engines.chat import first_run
from engines.models import store
from tests.fakehub.server import FakeHub


def test_only_the_starter_is_no_chat_model(fresh_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert [s.name for s in first_run.downloaded_models()] == [store.STARTER]
    facts = first_run.check()
    assert not facts.has_chat_model and "HF_HUB_OFFLINE" in facts.offline


def test_a_model_folder_with_a_chat_template_is_a_chat_model(fresh_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # would say offline, but is not asked
    folder = tmp_path / "tiny-chat"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["Gemma3ForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    store.add_local(folder, "tiny-chat")
    assert first_run.check() == first_run.FirstRun(True, None)


def test_the_hub_answers_or_is_named_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    hub = FakeHub().start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert first_run.hub_unreachable() is None
    finally:
        hub.stop()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert "Ember cannot reach 127.0.0.1:9" in first_run.hub_unreachable(timeout=2)
