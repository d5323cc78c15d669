"""Chat or text completion: how Ember talks to a model, decided from the model's own files.

A model whose files carry no chat template is a base model: it continues
text, it does not follow instructions. Sending it a chat makes llama.cpp fall
back to another family's template (ChatML), and the starter then echoes the
question with ``<|im_start|>`` markers until the reply limit. Ember never
does that: such a model runs in completion mode, its conversation becomes one
text to continue (:func:`completion_request`, for ``POST /v1/completions``),
and the chat window, the model picker and ``ember chat`` say
:data:`COMPLETION_NOTE`.

Where the template lives:

* GGUF: the header key ``tokenizer.chat_template`` (what llama.cpp reads);
* a Hugging Face / MLX folder: ``chat_template`` in ``tokenizer_config.json``,
  or a ``chat_template.jinja`` / ``chat_template.json`` file beside it;
* a catalog model not downloaded yet: the catalog lists chat models only.
"""
from __future__ import annotations

import enum
import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from engines.machine import gguf_info
from engines.models.store import ModelSpec

log = logging.getLogger(__name__)

#: What the chat window, the model picker and ``ember chat`` say about a completion model.
COMPLETION_NOTE = "continues your text; does not follow instructions"

#: The path under an OpenAI base URL that completion mode posts to.
COMPLETION_PATH = "/completions"

#: Turn markers a base model may write when it imagines a chat transcript: the reply ends there.
COMPLETION_STOPS = ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<|endoftext|>")

GGUF_TEMPLATE_KEY = "tokenizer.chat_template"
_FOLDER_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class Mode(str, enum.Enum):
    CHAT = "chat"
    COMPLETION = "completion"


@dataclass(frozen=True)
class ModeDecision:
    """The mode for a model and the fact it was decided from (for logs and ``--json``)."""

    mode: Mode
    reason: str

    @property
    def note(self) -> str:
        """The sentence people read beside the model's name; empty for a chat model."""
        return COMPLETION_NOTE if self.mode is Mode.COMPLETION else ""

    def to_dict(self) -> dict:
        return {"mode": self.mode.value, "reason": self.reason, "note": self.note}


def gguf_has_chat_template(path: str | os.PathLike) -> bool:
    """Whether the GGUF's header carries a chat template; :class:`gguf_info.GGUFError` if unreadable."""
    p = Path(path)
    stat = p.stat() if p.exists() else None
    return _gguf_template(str(p), stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0)


@functools.lru_cache(maxsize=64)
def _gguf_template(path: str, size: int, mtime_ns: int) -> bool:
    """Cached per file version: the header read costs about 0.2 s on the starter's vocabulary."""
    template = gguf_info.read(path, check_data=False).metadata.get(GGUF_TEMPLATE_KEY)
    return isinstance(template, str) and bool(template.strip())


def folder_has_chat_template(path: str | os.PathLike) -> bool:
    """Whether a Hugging Face or MLX model folder has a chat template."""
    folder = Path(path)
    if any((folder / name).is_file() for name in _FOLDER_TEMPLATE_FILES):
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("cannot read %s/tokenizer_config.json (%s); treating the model as a completion model",
                    folder, exc)
        return False
    return bool(config.get("chat_template")) if isinstance(config, dict) else False


def mode_of(spec: ModelSpec) -> ModeDecision:
    """Chat or completion for a model, from its files when it has them."""
    if not spec.is_local:
        if spec.source == "catalog":
            return ModeDecision(Mode.CHAT, "the catalog lists chat models only")
        return ModeDecision(Mode.CHAT, "no model files to read; assuming a chat model")
    path = Path(spec.path)
    if path.is_dir():
        has = folder_has_chat_template(path)
        where = "the model folder"
    else:
        has = gguf_has_chat_template(path)
        where = f"the GGUF header ({GGUF_TEMPLATE_KEY})"
    if has:
        return ModeDecision(Mode.CHAT, f"{where} has a chat template")
    return ModeDecision(Mode.COMPLETION, f"{where} has no chat template: a base model")


def has_chat_model(specs: Iterable[ModelSpec]) -> bool:
    """Whether any of these models on disk follows instructions (else the first run leads to a download).

    Pass the local store's models and the downloaded catalog variants; a file
    that cannot be read does not count.
    """
    for spec in specs:
        if not spec.is_local:
            continue
        try:
            if mode_of(spec).mode is Mode.CHAT:
                return True
        except gguf_info.GGUFError as exc:
            log.info("%s is not readable (%s); not counted as a chat model", spec.name, exc.problem)
    return False


# -- completion requests ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CompletionRequest:
    """One completion-mode request: the text to continue and where the reply stops."""

    prompt: str
    stop: tuple[str, ...] = field(default=COMPLETION_STOPS)

    def body(self, model: str | None = None, stream: bool = True, **options) -> dict:
        """The JSON body for ``POST {base_url}/completions``; options set to None are left out."""
        body: dict = {"prompt": self.prompt, "stream": stream, "stop": list(self.stop)}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if model:
            body["model"] = model
        body.update({k: v for k, v in options.items() if v is not None})
        return body


def _text(content) -> str:
    if isinstance(content, list):  # OpenAI content parts; images cannot be continued as text
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return "" if content is None else str(content)


def completion_prompt(messages: list[dict]) -> str:
    """A conversation as one text to continue, with no template of any model family.

    The model's earlier replies continued the text right where it ended, so
    they follow it directly; each new message (and a system text) starts a
    paragraph. Trailing spaces of a message are dropped: the model writes the
    space that begins the next word.
    """
    text = ""
    for message in messages:
        content = _text(message.get("content"))
        if not content:
            continue
        if message.get("role") == "assistant":
            text += content
        else:
            text += ("\n\n" if text else "") + content.rstrip(" \t")
    return text


def completion_request(messages: list[dict]) -> CompletionRequest:
    return CompletionRequest(completion_prompt(messages))
