"""Issue 13 in the desktop: the app serves the local API over its own engine manager; the tray copies
its URL and key; a model an outside tool starts shows as running; Settings change the port, the key,
the browsers let in and the local network (with its warning)."""
from __future__ import annotations

import socket
import threading

import httpx
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QMessageBox

from desktop.app import EmberApp
from desktop.settings_dialog import SettingsDialog
from engines import settings
from engines.gateway import keys

offscreen_tray = pytest.mark.qt_log_ignore("systemTrayWindowChanged")


@pytest.fixture
def app(qtbot, fresh_home):
    a = EmberApp(QApplication.instance(), use_tray=True)
    qtbot.waitUntil(lambda: a.local_api.url is not None or a.local_api.error is not None, timeout=30_000)
    yield a
    a.quit()
    a.tray.hide()
    QApplication.instance().setQuitOnLastWindowClosed(True)


def menu_action(tray, text: str):
    """The tray menu's entry starting with ``text`` (as the menu is when opened), or None."""
    tray.rebuild_menu()
    return next((a for a in tray.menu.actions() if a.text().startswith(text)), None)


def ask(url: str, key: str, model: str = "starter") -> httpx.Response:
    return httpx.post(url + "/completions", json={"model": model, "prompt": "Hello", "max_tokens": 2},
                      headers={"Authorization": f"Bearer {key}"}, timeout=240)


@offscreen_tray
def test_the_tray_copies_the_api_url_and_key(qtbot, app):
    assert app.local_api.error is None and app.local_api.url.startswith("http://127.0.0.1:")
    assert menu_action(app.tray, "Local API: ").text() == f"Local API: {app.local_api.url}"
    menu_action(app.tray, "Copy API URL").trigger()
    assert QGuiApplication.clipboard().text() == app.local_api.url
    menu_action(app.tray, "Copy API key").trigger()
    assert QGuiApplication.clipboard().text() == keys.get()
    models = httpx.get(app.local_api.url + "/models", headers={"Authorization": f"Bearer {keys.get()}"}, timeout=30)
    assert "starter" in [m["id"] for m in models.json()["data"]]


@offscreen_tray
@pytest.mark.slow
def test_a_model_an_outside_tool_starts_shows_as_running(qtbot, app):
    chat = app.chat_window()
    qtbot.addWidget(chat)
    result = {}
    assert app.manager.running() == []
    t = threading.Thread(target=lambda: result.setdefault("r", ask(app.local_api.url, keys.get())))
    t.start()
    qtbot.waitUntil(lambda: not t.is_alive(), timeout=240_000)
    assert result["r"].status_code == 200 and result["r"].json()["model"] == "starter"
    qtbot.waitUntil(lambda: menu_action(app.tray, "starter (ready)") is not None, timeout=10_000)
    assert "starter" in app.tray.tooltip()
    chat.engine.refresh()
    qtbot.waitUntil(lambda: chat.current_endpoint() is not None and chat.current_endpoint().kind == "local",
                    timeout=10_000)
    assert chat.current_model_name() == "starter"


@offscreen_tray
def test_settings_move_the_port_regenerate_the_key_and_warn_about_the_network(qtbot, app, monkeypatch):
    old_url, old_key = app.local_api.url, keys.get()
    dialog = SettingsDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    assert not dialog.lan_warning.isVisible()
    dialog.api_lan.setChecked(True)
    assert dialog.lan_warning.isVisible() and "network" in dialog.lan_warning.text()
    dialog.api_lan.setChecked(False)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    qtbot.mouseClick(dialog.regenerate_button, Qt.MouseButton.LeftButton)
    new_key = keys.get()
    assert new_key != old_key and dialog.api_key.text() == new_key
    assert httpx.get(old_url + "/models", headers={"Authorization": f"Bearer {old_key}"}, timeout=30).status_code == 401
    monkeypatch.delenv("EMBER_GATEWAY_PORT")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dialog.api_port.setValue(port)
    dialog.api_origins.setText("http://localhost:3000")
    dialog.accept()
    app.apply_settings()
    qtbot.waitUntil(lambda: app.local_api.url == f"http://127.0.0.1:{port}/v1", timeout=30_000)
    assert settings.get("gateway_origins") == ["http://localhost:3000"]
    preflight = httpx.options(app.local_api.url + "/chat/completions", timeout=30, headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert preflight.headers.get("access-control-allow-origin") == "http://localhost:3000"
    with pytest.raises(httpx.ConnectError):
        httpx.get(old_url + "/models", timeout=5)  # the old port is closed


@offscreen_tray
def test_a_taken_port_is_said_in_the_tray_and_the_app_runs_on(qtbot, fresh_home, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        monkeypatch.setenv("EMBER_GATEWAY_PORT", str(s.getsockname()[1]))
        notes = []
        a = EmberApp(QApplication.instance(), use_tray=True)
        monkeypatch.setattr(a.tray, "notify", lambda title, message, msecs=0: notes.append((title, message)))
        try:
            qtbot.waitUntil(lambda: a.local_api.error is not None, timeout=30_000)
            assert "already in use" in a.local_api.error
            assert menu_action(a.tray, "Local API: off").toolTip() == a.local_api.error
            assert not menu_action(a.tray, "Copy API URL").isEnabled()
            assert notes and "local API is off" in notes[0][0]
        finally:
            a.quit()
            a.tray.hide()


def test_a_web_page_address_with_a_path_is_refused_with_the_right_form(qtbot, fresh_home, monkeypatch):
    warned = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: warned.append(text))
    dialog = SettingsDialog()
    qtbot.addWidget(dialog)
    dialog.api_origins.setText("http://localhost:3000, localhost:8080/chat")
    dialog.accept()
    assert warned and "localhost:8080/chat" in warned[0] and "http://localhost:3000" in warned[0]
    assert dialog.result() != dialog.DialogCode.Accepted and settings.get("gateway_origins") == []
    dialog.api_origins.setText("http://localhost:3000, https://chat.example")
    dialog.accept()
    assert settings.get("gateway_origins") == ["http://localhost:3000", "https://chat.example"]
