"""Issue 14, point 7, in the chat window: a reply limit beyond the context is clamped to it, one below
1 is never sent (the setting's is used), with the real starter engine (n_ctx 2048) answering."""
from __future__ import annotations

import pytest

from desktop.chat_window import ChatWindow
from engines.running import backends

pytestmark = pytest.mark.slow


@pytest.fixture
def window(qtbot, manager, store):
    w = ChatWindow(manager, store=store)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.current_model_name() == "starter", timeout=10_000)
    yield w
    w.shutdown()


def _ask_and_stop(qtbot, window) -> tuple[str, int | None]:
    """Send a message; once the reply streams, stop it. (The status line while it streamed, the limit sent.)"""
    window.send("Write a long story about a lighthouse.")
    qtbot.waitUntil(lambda: window.streaming, timeout=60_000)
    status = window.status.text()
    with qtbot.waitSignal(window.reply_finished, timeout=60_000) as finished:
        window.stop()
    return status, finished.args[0].max_tokens


def test_a_limit_beyond_the_context_is_clamped_to_it(qtbot, window, manager):
    run = manager.get("starter")
    per_request = backends.get(run.plan.engine).context(run.plan).per_slot
    window.max_tokens = 10 ** 12  # llama.cpp would read this as a negative number: no limit at all
    status, sent = _ask_and_stop(qtbot, window)
    assert sent == per_request
    assert status.endswith(f"(reply limit {per_request:,} tokens)")


def test_a_limit_below_one_is_never_sent(qtbot, window):
    window.max_tokens = -5  # -1 would be "no limit" to llama.cpp
    status, sent = _ask_and_stop(qtbot, window)
    assert sent == 1024  # the reply_limit setting's default
    assert status.endswith("(reply limit 1,024 tokens)")
