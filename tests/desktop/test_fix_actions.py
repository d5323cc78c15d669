"""Every action a diagnosis can offer, clicked in the desktop app.

The actions are read from the source (every ``Fix(..., action=...)`` in engines/, see
``tests/helpers.fix_actions_in_source``); each one is offered in the guided dialog over the
app's chat window, clicked, and its effect looked for where the user would see it: the busy
row restarting the engine, a window (install, remote server, launch dialog, log, models),
the downloads panel, the input. Each button's tooltip carries the command for the terminal
(the command line prints the same, see tests/unit/test_actions.py). A new action without a
handler here fails this test by name.
"""
from __future__ import annotations

import shlex
import sys

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QMessageBox

from engines import actions, model_prefs
from engines.actions import Action
from engines.chat import remotes
from engines.chat.endpoint import Endpoint
from engines.diagnosis.types import Diagnosis, Fix, Kind
from engines.running import install, launch
from tests.fakehub.server import FakeHub
from tests.helpers import emitted_fixes

pytestmark = pytest.mark.slow

REPO = "ggml-org/gemma-3-270m-GGUF"
FILE, FILE2 = "gemma-3-270m-Q4_K_M.gguf", "gemma-3-270m-again-Q4_K_M.gguf"
HUB_NAME, HUB_NAME2 = f"{REPO}:{FILE}", f"{REPO}:{FILE2}"


@pytest.fixture
def hub(starter_path, tmp_path, monkeypatch, fresh_home):
    h = FakeHub()
    h.add(REPO, FILE, starter_path, throttle_bps=20_000_000)
    h.add(REPO, FILE2, starter_path, throttle_bps=20_000_000)
    h.start()
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield h
    h.stop()


@pytest.fixture
def app(qtbot, hub):
    from desktop.app import EmberApp
    app = EmberApp(QApplication.instance(), use_tray=False)
    qtbot.addWidget(app.chat)
    app.manager.launch(launch.plan("starter", overrides={"n_ctx": 512}))
    qtbot.waitUntil(lambda: app.chat.current_model_name() == "starter", timeout=10_000)
    app.chat.max_tokens = 4
    yield app
    if app.models_window is not None:
        app.models_window.downloads_view.manager.cancel(HUB_NAME)
        app.models_window.downloads_view.manager.cancel(HUB_NAME2)
        app.models_window.close()
    app.manager.stop_all()
    app.chat.keep_in_tray = False
    app.chat.close()
    QApplication.instance().setQuitOnLastWindowClosed(True)


def offer(qtbot, app, fix: Fix, facts: dict | None = None, name: str | None = "starter",
          endpoint: Endpoint | None = None, log_path: str | None = None, click: bool = True):
    """The guided dialog over the chat window with this one fix; its button clicked."""
    chat = app.chat
    d = Diagnosis(Kind.SERVER_ERROR, f"A failure that offers: {fix.label}", "What happened, in words.",
                  dict(facts or {}), [fix], log_path)
    with qtbot.waitSignal(chat.failure_shown, timeout=5_000) as shown:
        dialog = chat.troubleshooter.show_diagnosis(d, name, endpoint)
    assert shown.args[0] is dialog
    qtbot.waitExposed(dialog)
    step = actions.step(fix)
    if step.action is Action.ADVICE:
        return dialog
    button = next(b for b in dialog.fix_buttons if b.text() == fix.label)
    line = actions.cli_line(fix, dialog.where, d)
    assert button.toolTip().endswith(line.text) and line.text  # the terminal's command, said on the button
    if click:
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    return dialog


def opened_by(qtbot, app, fix: Fix, **kw):
    """The window the fix's handler opened."""
    with qtbot.waitSignal(app.chat.fixes.opened, timeout=30_000) as opened:
        offer(qtbot, app, fix, **kw)
    window = opened.args[0]
    qtbot.waitExposed(window)
    return window


# -- one check per action: the effect the user sees ------------------------------------------------

def check_relaunch(qtbot, app, fix):
    chat = app.chat
    step = actions.step(fix)
    offer(qtbot, app, fix)
    assert chat.engine.busy.isVisible()
    if step.action is Action.USE_ENGINE and step.argument != "llamacpp":  # the starter is a GGUF: said why not
        assert chat.engine.busy.label.text() == f"Restarting starter with {actions.LABELS[step.argument]}\u2026"
        with qtbot.waitSignal(chat.failure_shown, timeout=60_000) as shown:
            pass
        assert shown.args[0].diagnosis.title == "The chosen engine cannot run starter"
        shown.args[0].reject()
        return
    expected = {Action.RELAUNCH: "with the same settings", Action.CHANGE: "with context 1,024 tokens",
                Action.USE_ENGINE: "with llama.cpp"}[step.action]
    assert chat.engine.busy.label.text() == f"Restarting starter {expected}\u2026"
    qtbot.waitUntil(lambda: not chat.loading, timeout=120_000)
    run = app.manager.get("starter")
    assert run is not None and run.proc.running, chat.status.text()
    if step.action is Action.CHANGE:  # the change is the model's choice now: the next start uses it
        assert run.plan.params["n_ctx"] == 1024 and model_prefs.load("starter").params["n_ctx"] == 1024
        assert launch.default_plan("starter").params["n_ctx"] == 1024


def check_retry(qtbot, app, fix):
    chat = app.chat
    if not any(m.role == "user" for m in chat.history):
        with qtbot.waitSignal(chat.reply_finished, timeout=120_000):
            chat.send("Hello")
    with qtbot.waitSignal(chat.reply_finished, timeout=120_000):
        offer(qtbot, app, fix)
        assert chat.streaming and "starter is" in chat.status.text()  # the message goes again
    assert [m.role for m in chat.history] == ["user", "assistant"]


def check_install(qtbot, app, fix, screenshot):
    from desktop.install_dialog import InstallDialog
    dialog = opened_by(qtbot, app, fix)
    assert isinstance(dialog, InstallDialog)
    assert dialog.command_field.text() == shlex.join([sys.executable, "-m", "pip", "install", "xllamacpp"])
    assert dialog.install_button.isVisible() and not dialog.start_button.isVisible()
    qtbot.mouseClick(dialog.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == dialog.command_field.text()
    # what Install runs, here a stand-in for pip that prints what pip prints
    dialog.cmd = install.InstallCommand(dialog.cmd.display, (sys.executable, "-c", (
        "import time\nprint('Collecting xllamacpp', flush=True)\ntime.sleep(0.5)\n"
        "print('Successfully installed xllamacpp-0.2.0')")), dialog.cmd.interpreter)
    qtbot.mouseClick(dialog.install_button, Qt.MouseButton.LeftButton)
    assert dialog.bar.isVisible() and dialog.cancel_button.isVisible()  # progress, and a way out
    qtbot.waitUntil(lambda: dialog.result_label.isVisible(), timeout=30_000)
    assert dialog.result_label.text().startswith("Installed in")
    assert "Successfully installed xllamacpp-0.2.0" in dialog.output.toPlainText()
    assert dialog.start_button.isVisible()
    screenshot(dialog, "fix-install")
    dialog.close()


def check_download(qtbot, app, fix):
    offer(qtbot, app, fix, facts={"model": HUB_NAME}, name=None)
    qtbot.waitUntil(lambda: app.models_window is not None and app.models_window.isVisible(), timeout=10_000)
    panel = app.models_window.downloads_view
    qtbot.waitUntil(lambda: HUB_NAME in panel.rows and panel.rows[HUB_NAME].isVisible(), timeout=10_000)
    assert f"Downloading {HUB_NAME}" in app.chat.status.text()


def check_redownload(qtbot, app, fix):
    box = opened_by(qtbot, app, fix)  # the starter came with Ember: nothing to download it from
    assert isinstance(box, QMessageBox) and "was not downloaded by Ember" in box.text()
    box.close()
    offer(qtbot, app, fix, facts={"model": HUB_NAME2}, name=None)
    qtbot.waitUntil(lambda: app.models_window is not None and HUB_NAME2 in app.models_window.downloads_view.rows,
                    timeout=30_000)
    assert app.models_window.isVisible()


def check_edit_endpoint(qtbot, app, fix, screenshot, monkeypatch):
    from desktop.endpoint_dialog import EndpointDialog
    remotes.add("lab", "http://127.0.0.1:9/v1")
    ep = Endpoint("lab/starter", "http://127.0.0.1:9/v1", None, "remote", "starter", None)
    dialog = opened_by(qtbot, app, fix, name="lab/starter", endpoint=ep)
    assert isinstance(dialog, EndpointDialog)
    assert dialog.name_edit.text() == "lab" and dialog.name_edit.isReadOnly()
    assert dialog.url_edit.text() == "http://127.0.0.1:9/v1"
    screenshot(dialog, "fix-edit-endpoint")
    run = app.manager.get("starter")
    monkeypatch.setenv("EMBER_TEST_LAB_KEY", run.proc.api_key)
    dialog.url_edit.setText(run.proc.base_url)
    dialog.env_edit.setText("EMBER_TEST_LAB_KEY")
    with qtbot.waitSignal(dialog.saved, timeout=30_000):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    lab = remotes.get("lab")
    assert lab.url == remotes.normalize_url(run.proc.base_url) and lab.key_env == "EMBER_TEST_LAB_KEY"


def check_edit_parameters(qtbot, app, fix, screenshot):
    from desktop.launch_dialog import LaunchDialog
    # the key the diagnosis refused, a field of the dialog: that field, focused
    dialog = opened_by(qtbot, app, fix, facts={"key": "n_ctx"})
    assert isinstance(dialog, LaunchDialog) and dialog.focus_hint.text() == "The fix: set n_ctx below, then Launch."
    assert dialog.focusWidget() in (dialog.ctx_spin, dialog.ctx_spin.findChild(object, "qt_spinbox_lineedit"))
    dialog.reject()
    # the key a refused one meant ("Use sampling.min_p"), without a field: its row, ready for the value
    fix = Fix("Use sampling.min_p", {}, "Did you mean sampling.min_p?", action="edit_parameters")
    dialog = opened_by(qtbot, app, fix, facts={"key": "sampling.min_pp", "suggestions": ["sampling.min_p"]})
    assert isinstance(dialog, LaunchDialog)
    row = next(r for r in dialog.rows if r.pair()[0] == "sampling.min_p")
    assert dialog.advanced_box.isVisible() and dialog.focusWidget() is row.value_edit
    qtbot.keyClicks(row.value_edit, "0.07")
    qtbot.waitUntil(lambda: not dialog.is_estimating(), timeout=30_000)
    screenshot(dialog, "fix-edit-parameters")
    qtbot.mouseClick(dialog.launch_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not app.chat.loading, timeout=120_000)
    assert app.manager.get("starter").plan.params["sampling.min_p"] == pytest.approx(0.07)
    assert ("sampling.min_p", "0.07") in model_prefs.load("starter").advanced  # the dialog keeps the choice


def check_show_log(qtbot, app, fix):
    log_path = str(app.manager.get("starter").proc.log_path)
    dialog = offer(qtbot, app, fix, click=False, log_path=log_path)
    button = next(b for b in dialog.fix_buttons if b.text() == fix.label)
    with qtbot.waitSignal(dialog.log_shown, timeout=5_000) as shown:
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    viewer = shown.args[0]
    qtbot.waitExposed(viewer)
    assert str(viewer.path) == log_path and dialog.isVisible()  # the dialog stays for the other fixes
    viewer.close()
    dialog.reject()


def check_choose_model(qtbot, app, fix):
    if app.models_window is not None:
        app.models_window.hide()
    offer(qtbot, app, fix)
    qtbot.waitUntil(lambda: app.models_window is not None and app.models_window.isVisible(), timeout=10_000)


def check_new_conversation(qtbot, app, fix):
    chat = app.chat
    last = next(m.content for m in reversed(chat.history) if m.role == "user")
    offer(qtbot, app, fix)
    assert chat.history == [] and chat.composer.text() == last


def check_edit_message(qtbot, app, fix):
    chat = app.chat
    last = next(m.content for m in reversed(chat.history) if m.role == "user")
    chat.composer.set_text("")
    offer(qtbot, app, fix)
    assert chat.composer.text() == last


def check_advice(qtbot, app, fix, screenshot):
    dialog = offer(qtbot, app, fix)
    assert fix.label not in [b.text() for b in dialog.fix_buttons]  # no button that would do nothing
    label = next(a for a in dialog.advice_labels if fix.label in a.text())
    assert label.isVisible() and fix.note in label.text()
    screenshot(dialog, "fix-advice")
    dialog.reject()
    app.chat.fixes.run(fix)
    assert app.chat.status.text() == f"{fix.label}: {fix.note}"


def check_settings(qtbot, app, fix, screenshot):
    from engines import settings
    offer(qtbot, app, fix, facts={"timeout": 300.0})
    qtbot.waitUntil(lambda: getattr(app, "_settings_dialog", None) is not None and app._settings_dialog.isVisible(),
                    timeout=10_000)
    dialog = app._settings_dialog
    key = actions.setting_key(actions.step(fix))
    assert key == "stall_timeout_seconds" or fix.action.endswith(f":{key}")
    if key != "stall_timeout_seconds":
        dialog.reject()
        return
    assert dialog.focus_hint.isVisible() and dialog.stall_timeout.value() == 600  # twice what it was
    assert dialog.focusWidget() in (dialog.stall_timeout, dialog.stall_timeout.findChild(object, "qt_spinbox_lineedit"))
    screenshot(dialog, "fix-settings")
    dialog.accept()
    assert settings.get("stall_timeout_seconds") == 600


def add_cluster(name: str = "lab-cluster") -> None:
    from engines.cluster import store as cluster_store
    cluster_store.save(cluster_store.make(name, "http://127.0.0.1:9", user="admin", password_env="LAB_PASSWORD"))


def check_edit_cluster(qtbot, app, fix, screenshot):
    from desktop.cluster_dialog import AddClusterDialog
    add_cluster()
    dialog = opened_by(qtbot, app, fix, facts={"cluster": "lab-cluster"})
    assert isinstance(dialog, AddClusterDialog) and dialog.windowTitle() == "Edit the cluster lab-cluster"
    assert (dialog.name.text(), dialog.url.text(), dialog.user.text(), dialog.password_env.text()) == \
        ("lab-cluster", "http://127.0.0.1:9", "admin", "LAB_PASSWORD")
    screenshot(dialog, "fix-edit-cluster")
    dialog.reject()


def check_launch_on_cluster(qtbot, app, fix):
    add_cluster()
    offer(qtbot, app, fix, facts={"cluster": "lab-cluster", "uid": "qwen2.5-instruct"}, name=None)
    qtbot.waitUntil(lambda: app.models_window is not None and app.models_window.isVisible(), timeout=10_000)
    panel = app.models_window.clusters.panels["lab-cluster"]
    # the launch is under way there: its progress, or (nothing listens on that port) its diagnosis
    qtbot.waitUntil(lambda: panel.progress_label.isVisible() or (panel.dialog is not None and panel.dialog.isVisible()),
                    timeout=30_000)
    assert "Launching qwen2.5-instruct on lab-cluster" in app.chat.status.text()
    qtbot.waitUntil(lambda: panel.dialog is not None and panel.dialog.isVisible(), timeout=60_000)
    panel.dialog.reject()


CHECKS = {Action.CHOOSE_MODEL: check_choose_model, Action.SHOW_LOG: check_show_log, Action.INSTALL: check_install,
          Action.EDIT_ENDPOINT: check_edit_endpoint, Action.ADVICE: check_advice, Action.DOWNLOAD: check_download,
          Action.REDOWNLOAD: check_redownload, Action.RETRY: check_retry, Action.EDIT_MESSAGE: check_edit_message,
          Action.NEW_CONVERSATION: check_new_conversation, Action.CHANGE: check_relaunch,
          Action.RELAUNCH: check_relaunch, Action.USE_ENGINE: check_relaunch,
          Action.EDIT_PARAMETERS: check_edit_parameters, Action.SETTINGS: check_settings,
          Action.EDIT_CLUSTER: check_edit_cluster, Action.LAUNCH_ON_CLUSTER: check_launch_on_cluster}
ORDER = list(CHECKS)


def test_every_action_a_diagnosis_offers_has_a_handler_with_a_visible_effect(qtbot, app, screenshot, monkeypatch):
    assert set(app.chat.fixes.handlers) == set(Action)
    fixes = emitted_fixes()
    missing = {actions.step(f).action for f in fixes} - set(CHECKS)
    assert not missing, f"no desktop check for {missing}"
    fixes.sort(key=lambda f: (ORDER.index(actions.step(f).action), f.action or ""))
    extra = {"screenshot": screenshot, "monkeypatch": monkeypatch}
    done = []
    for fix in fixes:
        check = CHECKS[actions.step(fix).action]
        wanted = check.__code__.co_varnames[3:check.__code__.co_argcount]
        check(qtbot, app, fix, **{k: extra[k] for k in wanted})
        done.append(fix.action or actions.step(fix).action.value)
    print("\nclicked and seen: " + ", ".join(done))


def test_an_install_ember_leaves_to_the_user_is_shown_to_copy(qtbot, monkeypatch, screenshot):
    """vLLM goes in an environment of its own: without one set, Ember shows the command and why, and no Install."""
    from desktop.install_dialog import InstallDialog
    monkeypatch.delenv("EMBER_VLLM_PYTHON", raising=False)
    cmd = install.command_for("pip install vllm   (in its own environment; see Settings > Engines)", "vllm")
    dialog = InstallDialog(cmd, "Install vLLM")
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    assert not dialog.install_button.isVisible() and dialog.copy_button.isDefault()
    assert dialog.command_field.text() == "pip install vllm"
    assert dialog.why_not.isVisible() and "in its own environment" in dialog.why_not.text()
    screenshot(dialog, "fix-install-own-environment")
