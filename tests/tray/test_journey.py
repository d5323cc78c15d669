"""A newcomer's journey through the real app on a real X display with a real tray (Xvfb + trayer):
start ``ember``, open Models then Chat from the tray menu, send a message to the starter, and end
the app, once with the tray's Quit and once with SIGTERM. Either way the process exits with status 0
within 5 s and leaves no engine behind (before the fix, Quit with the models window open left a
ghost process that ignored every later Quit and SIGTERM)."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.tray import xdesk
from tests.tray.xdesk import (MISSING, SKIP_REASON, Desk, alive, engine_processes, screenshot, start_app, stop_app,
                              windows_named, x)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)]

MESSAGE = "The capital of France is"
MODELS_TITLE = "Ember \u2014 Models"


def conversations(home: Path) -> list[tuple[str, str]]:
    db = home / "data" / "conversations.sqlite3"
    if not db.exists():
        candidates = list(home.rglob("conversations.sqlite3"))
        if not candidates:
            return []
        db = candidates[0]
    with sqlite3.connect(db, timeout=5) as con:
        return con.execute("SELECT role, content FROM messages ORDER BY id").fetchall()


def models_then_chat_then_a_message(env: dict, app: subprocess.Popen, name: str, shots: bool) -> list:
    """The journey up to a reply streaming from the starter; returns the engine processes. Screenshots
    along the way with ``shots`` (the README's), and of the screen when a step did not happen."""
    try:
        return _journey(env, app, shots)
    except AssertionError:
        screenshot(env, f"{name}-failed")
        raise


def _journey(env: dict, app: subprocess.Popen, shots: bool) -> list:
    desk = Desk(env, app)
    models = desk.open_window(1, MODELS_TITLE)
    if shots:
        desk.settle()  # the list filled in
        screenshot(env, "journey-1-models")
    chat = desk.open_window(0, "Ember")
    x(env, "xdotool", "windowraise", chat)
    x(env, "xdotool", "windowfocus", "--sync", chat)
    time.sleep(0.5)
    x(env, "xdotool", "type", "--delay", "20", MESSAGE)
    time.sleep(0.5)
    x(env, "xdotool", "key", "Return")
    home = Path(env["EMBER_HOME"])
    wait_for(lambda: ("user", MESSAGE) in conversations(home), 30, "the message to be sent")
    engines = wait_for(lambda: engine_processes(app.pid), 60, "the starter's engine to start")
    wait_for(lambda: any(role == "assistant" and content.strip() for role, content in conversations(home)), 120,
             "the starter's reply")
    if shots:
        screenshot(env, "journey-2-chat-reply")
    assert windows_named(env, app.pid, MODELS_TITLE) == [models]  # both windows still up
    assert alive(engines), "the engine should be running before the app ends"
    return engines


def ended_cleanly(app: subprocess.Popen, engines: list, asked_at: float) -> float:
    """Seconds from the request to the exit; asserts status 0 and no engine left."""
    try:
        app.wait(timeout=max(0.0, asked_at + 5 - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail("the app was still running 5 s after it was asked to end (a ghost)")
    took = time.monotonic() - asked_at
    assert app.returncode == 0
    wait_for(lambda: not alive(engines), 5, "the engines to be gone")
    return took


def test_models_then_chat_then_quit_from_the_tray_exits_and_leaves_no_engine(display, trayer, fresh_home):
    app = start_app(display, [str(xdesk.EMBER_SCRIPT)] if xdesk.EMBER_SCRIPT.exists() else None)
    try:
        engines = models_then_chat_then_a_message(display, app, "journey-quit", shots=True)
        asked = Desk(display, app).click_item(-1, "Quit")
        took = ended_cleanly(app, engines, asked)
        print(f"\nQuit from the tray with Models and Chat open: exited in {took:.2f} s, status 0, no engine left")
    finally:
        out = stop_app(app)
    assert app.returncode == 0, out
    # the next start is a fresh app, not a hand-over to a ghost
    again = start_app(display)
    try:
        Desk(display, again)
        assert again.poll() is None
    finally:
        out = stop_app(again)
    assert "already running" not in out and again.returncode == 0, out


def test_models_then_chat_then_sigterm_exits_and_leaves_no_engine(display, trayer, fresh_home):
    app = start_app(display)
    try:
        engines = models_then_chat_then_a_message(display, app, "journey-sigterm", shots=False)
        asked = time.monotonic()
        app.send_signal(signal.SIGTERM)
        took = ended_cleanly(app, engines, asked)
        print(f"\nSIGTERM with Models and Chat open: exited in {took:.2f} s, status 0, no engine left")
    finally:
        out = stop_app(app)
    assert app.returncode == 0, out


def test_an_outside_tool_uses_the_local_api_of_the_running_app(display, trayer, fresh_home):
    """Issue 13: the real app serves the local API; the openai SDK starts the starter through it (the
    engine is the app's child, so the tray lists it), and the tray's Quit closes the port with the rest."""
    import openai
    from tests.integration.test_gateway import free_port
    port = free_port()
    env = dict(display, EMBER_GATEWAY_PORT=str(port))
    app = start_app(env)
    try:
        desk = Desk(env, app)
        key_file = Path(env["EMBER_HOME"]) / "config" / "api_key"
        key = wait_for(lambda: key_file.exists() and key_file.read_text().strip(), 30, "the local API's key")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=240)
        answer = client.chat.completions.create(model="starter", max_tokens=8,
                                                messages=[{"role": "user", "content": "Hello"}])
        assert answer.model == "starter"
        engines = engine_processes(app.pid)
        assert len(engines) == 1  # started on demand, by the app
        desk.open_menu("the menu listing the starter as ready")
        screenshot(env, "local-api-tray-menu")
        x(env, "xdotool", "key", "Escape")
        asked = desk.click_item(-1, "Quit")
        ended_cleanly(app, engines, asked)
        with pytest.raises(openai.APIConnectionError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=5).models.list()
    finally:
        out = stop_app(app)
    assert app.returncode == 0, out
