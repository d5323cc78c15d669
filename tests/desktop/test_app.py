"""The app shell: single instance between real processes, tray or fallback window,
start at login, settings, quit stopping engines."""
from __future__ import annotations

import os
import plistlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from desktop.app import EmberApp
from engines import autostart
from engines import settings
from tests.helpers import wait_for

APP_CMD = [sys.executable, "-m", "desktop.launcher"]
# A tray icon forced on under the offscreen platform (which has no tray): Qt's own warning, not ours.
# The real tray is tested under Xvfb + trayer in tests/tray/.
offscreen_tray = pytest.mark.qt_log_ignore("systemTrayWindowChanged")




@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("EMBER_HOME", str(h))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return h


@pytest.fixture
def ember_app(qtbot, home):
    apps = []

    def make(**kw):
        app = EmberApp(QApplication.instance(), **kw)
        apps.append(app)
        if app.chat is not None:
            qtbot.addWidget(app.chat)
        return app

    yield make
    for app in apps:
        app.manager.stop_all()
        if app.tray is not None:
            app.tray.hide()
        if app.chat is not None:
            app.chat.keep_in_tray = False
            app.chat.close()
    QApplication.instance().setQuitOnLastWindowClosed(True)


def test_second_start_hands_over_to_the_running_app_and_exits(tmp_path):
    env = dict(os.environ, EMBER_HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="offscreen")
    log = tmp_path / "home" / "logs" / "ember.log"
    first = subprocess.Popen(APP_CMD, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: log.exists() and "main window shown" in log.read_text(), 60, "the first app's window")
        started = time.monotonic()
        second = subprocess.run(APP_CMD, env=env, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout
        assert took < 20
        wait_for(lambda: "show request from a second start" in log.read_text(), 10, "the show request")
        assert first.poll() is None  # the first one is still there
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=30)
    assert first.returncode == 0, out


def test_without_a_tray_the_chat_is_a_normal_window_that_quits_on_close(ember_app, screenshot):
    app = ember_app(use_tray=False)
    assert app.tray is None and app.chat is not None and app.chat.isVisible()
    assert not app.chat.keep_in_tray and QApplication.instance().quitOnLastWindowClosed()
    assert [a.text() for a in app.chat.menuBar().actions()] == ["&Ember"]
    screenshot(app.chat, "fallback-window")


@offscreen_tray
def test_with_a_tray_closing_the_chat_keeps_the_app_and_says_so_once(qtbot, ember_app):
    app = ember_app(use_tray=True)
    assert not QApplication.instance().quitOnLastWindowClosed()
    texts = [a.text() for a in app.tray.menu.actions() if not a.isSeparator()]
    assert texts == ["Chat", "Models…", "Start at login", "Settings…", "Show logs", "About Ember", "Quit"]
    start_at_login = app.tray.menu.actions()[texts.index("Start at login") + 1]
    assert app.tray.state.state == "idle" and app.tray.state.tooltip == "Ember: no model running"
    app.show_chat()
    assert app.chat.isVisible()
    app.chat.close()
    assert not app.chat.isVisible() and app.chat.keep_in_tray
    assert settings.get("tray_notice_shown") is True
    del start_at_login


@offscreen_tray
def test_start_at_login_is_off_until_ticked_and_writes_a_valid_entry(qtbot, ember_app, tmp_path):
    app = ember_app(use_tray=True)
    entry = tmp_path / "xdg" / "autostart" / "ember.desktop"
    assert not entry.exists()
    toggle = next(a for a in app.tray.menu.actions() if a.text() == "Start at login")
    assert toggle.isCheckable() and not toggle.isChecked()
    toggle.trigger()
    assert entry.exists() and settings.get("start_at_login") is True
    assert "Exec=" in entry.read_text()
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    toggle = next(a for a in app.tray.menu.actions() if a.text() == "Start at login")
    assert toggle.isChecked()
    toggle.trigger()
    assert not entry.exists() and settings.get("start_at_login") is False


def test_launch_agent_on_macos_fake_platform(tmp_path, monkeypatch):
    """A fake macOS (sys.platform only): the LaunchAgent plist Ember would write there."""
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("HOME", str(tmp_path))
    path = autostart.enable(["/Applications/Ember.app/Contents/MacOS/ember"])
    assert path == tmp_path / "Library" / "LaunchAgents" / "io.github.ember.plist"
    agent = plistlib.loads(path.read_bytes())
    assert agent["ProgramArguments"] == ["/Applications/Ember.app/Contents/MacOS/ember"] and agent["RunAtLoad"]
    assert autostart.disable() and not path.exists()


@offscreen_tray
def test_settings_dialog_saves_and_the_app_applies(qtbot, ember_app, screenshot):
    from desktop.settings_dialog import SettingsDialog
    app = ember_app(use_tray=True)
    assert app.manager.idle_timeout == 30 * 60
    dialog = SettingsDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    screenshot(dialog, "settings-dialog")
    dialog.idle_minutes.setValue(5)
    dialog.n_ctx.setValue(8192)
    dialog.engine_python["vllm"].setText("/opt/vllm/bin/python")
    dialog.accept()
    app.apply_settings()
    assert app.manager.idle_timeout == 300
    assert settings.get("default_n_ctx") == 8192 and settings.engine_python("vllm") == "/opt/vllm/bin/python"
    dialog = SettingsDialog()
    qtbot.addWidget(dialog)
    assert dialog.idle_minutes.value() == 5 and not dialog.idle_never.isChecked()
    dialog.idle_never.setChecked(True)
    dialog.accept()
    app.apply_settings()
    assert app.manager.idle_timeout is None and settings.get("idle_unload_minutes") is None


@offscreen_tray
@pytest.mark.slow
def test_models_window_launch_idle_unload_and_quit(qtbot, ember_app, fresh_home):
    """Models window -> launch -> ready in tray and chat; idle unload shows 'unloaded'; Quit stops engines."""
    from engines.running import launch
    app = ember_app(use_tray=True)
    app.show_models()
    if app.models_window is not None:  # part B's window: launches reach the app through launch_requested
        qtbot.addWidget(app.models_window)
        assert app.models_window.isVisible()
        emit = app.models_window.launch_requested.emit
    else:
        emit = app.launch_plan
    with qtbot.waitSignal(app.bridge.ready, timeout=120_000):
        emit(launch.plan("starter", overrides={"n_ctx": 512}))
    qtbot.waitUntil(lambda: app.chat is not None and app.chat.isVisible(), timeout=5_000)
    qtbot.waitUntil(lambda: app.chat.current_model_name() == "starter", timeout=10_000)
    run = app.manager.get("starter")
    assert run.proc.running and app.tray.state.state == "ready"
    assert app.tray.state.tooltip == "Ember: starter ready"
    assert "starter (ready)" in [a.text() for a in app.tray.menu.actions()]

    app.manager.idle_timeout = 0.1  # what the settings' minutes become, made tiny
    time.sleep(0.2)
    with qtbot.waitSignal(app.bridge.unloaded, timeout=30_000):
        app.check_idle()  # what the idle QTimer calls
    assert not run.proc.running
    assert app.tray.state.state == "unloaded" and "unloaded while idle" in app.tray.state.tooltip
    assert "starter (unloaded while idle)" in [a.text() for a in app.tray.menu.actions()]

    app.manager.idle_timeout = None
    with qtbot.waitSignal(app.bridge.ready, timeout=120_000):
        app.launch_plan(launch.plan("starter", overrides={"n_ctx": 512}))
    run = app.manager.get("starter")
    app.quit()
    assert not run.proc.running and app.manager.running() == []


def test_log_viewer_follows_a_growing_log(qtbot, tmp_path, screenshot):
    from desktop.log_viewer import LogViewer
    path = tmp_path / "engine.log"
    path.write_text("first line\n")
    viewer = LogViewer(path, poll_ms=50)
    qtbot.addWidget(viewer)
    viewer.show()
    assert viewer.text.toPlainText() == "first line\n" and viewer.text.isReadOnly()
    with path.open("a") as f:
        f.write("llama_model_load: error loading model\n")
    qtbot.waitUntil(lambda: "error loading model" in viewer.text.toPlainText(), timeout=5_000)
    screenshot(viewer, "log-viewer")
