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
from PySide6.QtCore import QObject, Qt, QTimer, Signal
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
    assert texts == ["Chat", "Models…", "Local API: starting…", "Copy API URL", "Copy API key", "Start at login",
                     "Settings…", "Show logs", "About Ember", "Quit"]
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
    assert run_loop_until_quit(QApplication.instance(), app.quit) == 0
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


# -- quit, whatever is open ------------------------------------------------------------------------

def run_loop_until_quit(qapp, start, limit_ms: int = 10_000) -> int:
    """Run the app's real event loop (``exec``) with ``start`` queued; the loop's exit code, or 99 when
    it is still running after ``limit_ms`` (the ghost: Quit did not end it)."""
    QTimer.singleShot(0, start)
    guard = QTimer(singleShot=True, interval=limit_ms)
    guard.timeout.connect(lambda: qapp.exit(99))
    guard.start()
    try:
        return qapp.exec()
    finally:
        guard.stop()  # or it ends a later test's wait


@offscreen_tray
def test_quit_ends_the_app_with_the_models_and_chat_windows_open(qtbot, ember_app):
    """The ghost: Models, then Chat, then tray Quit left the process running with the models window up
    (Qt's quit asked each window to close; the chat window, hiding to the tray, refused, so Qt gave
    up) and every later Quit, Ctrl+Q or SIGTERM was ignored."""
    qapp = QApplication.instance()
    app = ember_app(use_tray=True)
    app.show_models()
    qtbot.addWidget(app.models_window)
    app.show_chat()
    qtbot.addWidget(app.chat)
    app.show_settings()  # a dialog open too
    assert app.models_window.isVisible() and app.chat.isVisible()
    quitting = []
    app.quitting.connect(lambda: quitting.append(True))
    quit_action = next(a for a in app.tray.menu.actions() if a.text() == "Quit")
    assert run_loop_until_quit(qapp, quit_action.trigger) == 0
    assert quitting == [True]
    assert not [w for w in qapp.topLevelWidgets() if w.isVisible()]
    assert not app.tray.icon.isVisible()
    # a later Quit (Ctrl+Q in the chat window, or SIGTERM: both call quit) still ends the loop
    assert run_loop_until_quit(qapp, app.chat.quit_requested.emit) == 0
    assert quitting == [True]  # engines are stopped once


def test_show_logs_without_a_file_manager_shows_the_folder_with_copy(qtbot, ember_app, screenshot):
    """This machine has no file manager (no xdg-open): Show logs must still lead somewhere."""
    from desktop.folder import FolderDialog
    from engines import paths
    app = ember_app(use_tray=False)
    dialog = app.show_logs()
    assert isinstance(dialog, FolderDialog) and dialog.isVisible()
    assert dialog.path_field.text() == str(paths.log_dir()) and dialog.path_field.isReadOnly()
    qtbot.mouseClick(dialog.copy_button, Qt.LeftButton)
    assert QApplication.clipboard().text() == str(paths.log_dir()) and dialog.copy_button.text() == "Copied"
    screenshot(dialog, "log-folder-without-file-manager")
    dialog.close()


def test_log_viewer_open_folder_without_a_file_manager(qtbot, tmp_path):
    from desktop.folder import FolderDialog
    from desktop.log_viewer import LogViewer
    path = tmp_path / "engines" / "engine.log"
    path.parent.mkdir()
    path.write_text("a line\n")
    viewer = LogViewer(path)
    qtbot.addWidget(viewer)
    viewer.show()
    qtbot.mouseClick(viewer.folder_button, Qt.LeftButton)
    dialogs = [d for d in viewer.findChildren(FolderDialog) if d.isVisible()]
    assert len(dialogs) == 1 and dialogs[0].path_field.text() == str(path.parent)


# -- the tray: downloads and crashes -----------------------------------------------------------------

class StandInModelsWindow(QObject):
    """Only what the app uses of the models window for downloads: its progress signal."""

    download_progress = Signal(str, float)


@offscreen_tray
def test_a_download_shows_on_the_tray_icon_tooltip_and_menu(qtbot, ember_app):
    app = ember_app(use_tray=True)
    window = StandInModelsWindow()
    assert app.connect_models_window(window)
    idle_icon = app.tray.icon.icon().pixmap(64, 64).toImage()
    window.download_progress.emit("qwen2.5-0.5b-instruct", 0.0)
    window.download_progress.emit("qwen2.5-0.5b-instruct", 0.42)
    assert "Downloading qwen2.5-0.5b-instruct… 42 %" in app.tray.icon.toolTip()
    assert app.tray.icon.toolTip().startswith("Ember: no model running")
    texts = [a.text() for a in app.tray.menu.actions()]
    assert "Downloading qwen2.5-0.5b-instruct… 42 %" in texts
    assert app.tray.icon.icon().pixmap(64, 64).toImage() != idle_icon  # the bar on the icon
    window.download_progress.emit("qwen2.5-0.5b-instruct", 0.9)
    assert "Downloading qwen2.5-0.5b-instruct… 90 %" in [a.text() for a in app.tray.menu.actions()]
    window.download_progress.emit("qwen2.5-0.5b-instruct", -1.0)
    assert app.tray.icon.toolTip() == "Ember: no model running"
    assert not [a for a in app.tray.menu.actions() if a.text().startswith("Downloading")]
    assert app.tray.icon.icon().pixmap(64, 64).toImage() == idle_icon


@offscreen_tray
@pytest.mark.slow
def test_an_engine_killed_by_sigkill_shows_everywhere_within_two_seconds(qtbot, ember_app, fresh_home):
    """kill -9 of a ready engine (what the out-of-memory killer does): tray icon, tooltip, tray menu,
    chat model picker and models window all stop saying "ready" within 2 s."""
    from engines.running import launch
    app = ember_app(use_tray=True)
    app.show_models()
    qtbot.addWidget(app.models_window)
    with qtbot.waitSignal(app.bridge.ready, timeout=120_000):
        app.launch_plan(launch.plan("starter", overrides={"n_ctx": 512}))
    qtbot.addWidget(app.chat)
    qtbot.waitUntil(lambda: app.chat.current_model_name() == "starter" and not app.chat.loading, timeout=10_000)
    row = app.models_window.row_widgets.get("starter")
    qtbot.waitUntil(lambda: row is None or row.state == "running", timeout=10_000)
    assert "starter (ready)" in [a.text() for a in app.tray.menu.actions()]
    pid = app.manager.get("starter").proc.pid
    for _ in range(5):  # a sampled reply may also end at once: ask again until one is streaming
        app.chat.send("Count from one to a thousand.")
        qtbot.waitUntil(lambda: not app.chat.streaming or len(app.chat.history[-1].content) > 5, timeout=60_000)
        if app.chat.streaming:
            break
    assert app.chat.streaming, [(m.role, m.content[:80]) for m in app.chat.history] + [app.chat.status.text()]

    with qtbot.waitSignal(app.chat.failure_shown, timeout=10_000) as shown:
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
    dialog = shown.args[0]  # the reply it broke is diagnosed as the crash it was, not a broken connection
    assert dialog.diagnosis.title == "The engine was killed while answering", dialog.diagnosis.title
    assert "was killed by SIGKILL" in dialog.diagnosis.explanation
    assert dialog.fix_buttons[0].text() == "Restart the engine"
    dialog.close()

    def everywhere() -> bool:
        texts = [a.text() for a in app.tray.menu.actions()]
        return (app.tray.state.state == "error"
                and "starter (stopped: engine was killed by SIGKILL)" in texts and "starter (ready)" not in texts
                and app.chat.select_model("starter") is False
                and (row is None or row.state != "running"))

    qtbot.waitUntil(everywhere, timeout=2_000)
    took = time.monotonic() - killed
    assert app.tray.icon.toolTip() == "Ember: starter stopped: engine was killed by SIGKILL"
    assert app.chat.engine.offer.isVisibleTo(app.chat)  # the chat offers to start a model again
    print(f"\ncrash shown everywhere {took * 1000:.0f} ms after kill -9")

    # the tray's "Start again" brings it back with the same settings
    again = next(a for a in app.tray.menu.actions() if a.text().startswith("starter (stopped"))
    start_again = next(a for a in again.menu().actions() if a.text() == "Start again")
    with qtbot.waitSignal(app.bridge.ready, timeout=120_000):
        start_again.trigger()
    assert app.manager.get("starter").plan.params["n_ctx"] == 512
    qtbot.waitUntil(lambda: app.tray.state.state == "ready", timeout=5_000)
    app.manager.stop_all()
