"""The models window's first-run path and the issue-11 fixes, over the real core:
"Recommended for this computer" (online, offline, folded once a chat model is here),
"Download and chat" through a FAKE hub on 127.0.0.1 (this machine cannot reach the real one)
into a real llama.cpp engine and the chat window, best fit first by expected speed,
filters remembered across restarts, and Open folder without a file manager."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from engines import settings
from engines.machine import hardware
from engines.models import downloads as D
from engines.models import records
from engines.running.launch import LaunchPlan
from engines.running.manager import EngineManager
from tests.fakehub.server import FakeHub
from tests.helpers import FIXTURES

LAPTOP = FIXTURES / "cpu_laptop_8gb.json"
GEMMA_TEMPLATE = ("{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n"
                  "{% endfor %}<start_of_turn>model\n")


@pytest.fixture(scope="session")
def chat_gguf(tmp_path_factory, starter_path):
    """The starter's weights with a chat template in its header: a real GGUF that counts as a chat model."""
    out = tmp_path_factory.mktemp("chat-model") / "chat.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--chat-template", GEMMA_TEMPLATE,
                    "--force", str(starter_path), str(out)], check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture
def mgr():
    m = EngineManager(idle_timeout=None)
    yield m
    m.stop_all()


@pytest.fixture
def hub(tmp_path, monkeypatch, fresh_home):
    h = FakeHub().start()
    for k, v in h.environ(tmp_path / "hf-cache").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield h
    h.stop()


def open_window(qtbot, mgr, hw=None, downloads=None):
    from desktop.models_window import ModelsWindow
    w = ModelsWindow(mgr, hardware=hw, downloads=downloads or D.DownloadManager(max_parallel=1))
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.models_loaded, timeout=60_000):
        w.show()
    qtbot.waitUntil(lambda: w.recommended.reach is not None, timeout=10_000)
    return w


def visible_order(w) -> list[str]:
    return [n for n in w._layout_order if w.row_widgets[n].isVisible()]


# -- recommendations ------------------------------------------------------------------------------

def test_first_run_recommends_chat_models_that_fit_with_why(qtbot, hub, mgr, screenshot):
    hw = hardware.HardwareProfile.load(LAPTOP)  # a fake 8 GB laptop, the profile
    w = open_window(qtbot, mgr, hw)
    view = w.recommended
    assert view.isVisible() and view.toggle.isChecked(), "open on a first run: no chat model yet"
    assert "tiny offline demo" in view.intro.text()
    assert not view.offline.isVisible(), "the fake hub answers"
    assert 1 <= len(view.rows) <= 3
    for rank, (name, r) in enumerate(view.rows.items(), start=1):
        assert r.isVisible() and r.button.text() == "Download and chat" and r.button.isEnabled()
        assert r.title.text().startswith(f"{rank}. ")
        row = w.row_widget(name).row
        assert row["fit"] in ("gpu", "partial", "cpu") and row["recommended_rank"] == rank
        assert "tokens/s on this computer" in r.because.text() and "estimate" in r.because.text()
        # the checked catalog knows each file's exact size, so the size is not called an estimate
        assert r.size_label.text().endswith(" to download") and "about" not in r.size_label.text()
    w.resize(900, 900)
    qtbot.wait(100)
    screenshot(w, "models_recommended")


def test_offline_says_so_plainly_and_keeps_the_starter_one_click_away(qtbot, fresh_home, mgr, monkeypatch,
                                                                     screenshot):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = open_window(qtbot, mgr)
    view = w.recommended
    assert view.offline.isVisible()
    assert view.offline_label.text().startswith("<b>Offline.</b> Downloads are turned off on this computer")
    assert all(not r.button.isEnabled() for r in view.rows.values())
    assert view.starter_button.isVisible() and view.starter_button.isEnabled()
    w.resize(900, 900)
    qtbot.wait(100)
    screenshot(w, "models_recommended_offline")
    with qtbot.waitSignal(w.launch_requested, timeout=30_000) as blocker:
        view.starter_button.click()
    plan = blocker.args[0]
    assert isinstance(plan, LaunchPlan) and plan.model.name == "starter" and plan.engine == "llamacpp"


def test_an_unreachable_hub_is_offline_too_and_check_again_asks_again(qtbot, fresh_home, mgr, monkeypatch):
    hub = FakeHub().start()
    url = hub.url
    hub.stop()  # nothing listens there now
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    w = open_window(qtbot, mgr)
    view = w.recommended
    host = url.split("//", 1)[1]
    assert view.offline.isVisible() and f"Ember cannot reach {host}" in view.offline_label.text()
    assert "ConnectError" in view.offline_label.toolTip(), "the raw reason is there for who wants it"
    hub = FakeHub()
    hub.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    view.recheck_button.click()
    qtbot.waitUntil(lambda: view.reach is not None and view.reach.online, timeout=10_000)
    assert not view.offline.isVisible() and all(r.button.isEnabled() for r in view.rows.values())
    hub.stop()


def test_folded_but_one_click_away_once_a_chat_model_is_here(qtbot, hub, mgr, chat_gguf):
    from engines.models import store
    store.add_local(chat_gguf, "my-chat")
    w = open_window(qtbot, mgr, hardware.HardwareProfile.load(LAPTOP))
    view = w.recommended
    assert w.has_chat and view.isVisible() and not view.toggle.isChecked() and not view.body.isVisible()
    view.toggle.click()
    assert view.body.isVisible() and view.rows and "picked for this computer" in view.intro.text()


# -- Download and chat ----------------------------------------------------------------------------

@pytest.fixture
def ember_app(qtbot, hub, monkeypatch, tmp_path):
    from desktop.app import EmberApp
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    apps = []

    def make():
        app = EmberApp(QApplication.instance(), use_tray=False)
        apps.append(app)
        return app
    yield make
    for app in apps:
        app.manager.stop_all()
        for window in (app.chat, app.models_window):
            if window is not None:
                window.close()
    QApplication.instance().setQuitOnLastWindowClosed(True)


@pytest.mark.slow
def test_download_and_chat_downloads_with_progress_then_launches_and_opens_the_chat(qtbot, hub, ember_app, chat_gguf,
                                                                                    screenshot):
    app = ember_app()
    app.show_models()
    w = app.models_window
    qtbot.waitUntil(lambda: bool(w.recommended.rows) and w.recommended.reach is not None
                    and not w.hw_busy.isVisible(), timeout=60_000)  # the whole list is built
    name, rec = next(iter(w.recommended.rows.items()))
    served = hub.add_catalog(name, chat_gguf, throttle_bps=60_000_000)
    fractions = []
    w.download_progress.connect(lambda n, f: fractions.append((n, f)))
    rec.button.click()
    panel = w.downloads_view
    qtbot.waitUntil(lambda: name in panel.rows and 0 < panel.rows[name].bar.value() < 1000, timeout=30_000)
    assert rec.bar.isVisible() and rec.bar.value() > 0 and " of 241 MiB" in rec.status.text()
    assert not rec.button.isEnabled() and rec.button.text() == "Downloading\u2026"
    assert w.row_widget(name).download_button.text().startswith("Downloading\u2026 ")
    w.resize(900, 900)
    screenshot(w, "models_recommended_downloading")
    qtbot.waitUntil(lambda: any(run.plan.model.name == name for run in app.manager.running()), timeout=120_000)
    assert records.ready_path(name), "verified against the hub's checksum and recorded"
    assert sum(hub.served.values()) >= served.size, "the bytes came from the hub"
    qtbot.waitUntil(lambda: app.chat is not None and app.chat.isVisible(), timeout=30_000)
    mine = [f for n, f in fractions if n == name]
    assert mine and mine[-1] == -1.0, "the tray hears the end"
    under_way = [f for f in mine if f >= 0]
    assert under_way and all(0 <= f <= 1 for f in under_way) and under_way == sorted(under_way)
    assert any(0 < f < 1 for f in under_way), "progress on the way, not only start and end"
    # a chat model is here now: the recommendations fold, still one click away
    qtbot.waitUntil(lambda: w.has_chat and not w.recommended.toggle.isChecked(), timeout=60_000)


def test_download_button_in_the_list_queues_and_errors_show_in_words(qtbot, hub, mgr):
    w = open_window(qtbot, mgr, hardware.HardwareProfile.load(LAPTOP))
    name = next(n for n, r in w.row_widgets.items() if r.download_button.isVisible())
    with qtbot.waitSignal(w.download_progress, timeout=30_000,
                          check_params_cb=lambda n, f: n == name and f == -1.0):
        w.row_widget(name).download_button.click()
    job_row = w.downloads_view.rows[name]
    qtbot.waitUntil(job_row.error.isVisible, timeout=5_000)  # a new row shows on the next event-loop turn
    assert job_row.state.text() == "Failed"
    assert "was not found on " + hub.url in job_row.error.text()
    assert job_row.pause_button.text() == "Retry"
    assert w.row_widget(name).download_button.text() == "Try again"


def test_a_network_failure_is_said_in_words_with_the_raw_reason_underneath(qtbot, hub, mgr, starter_path):
    w = open_window(qtbot, mgr, hardware.HardwareProfile.load(LAPTOP))
    name = next(iter(w.recommended.rows))
    hub.add_catalog(name, starter_path)
    hub.stop()  # the network goes away
    w.recommended.rows[name].button.click()
    qtbot.waitUntil(lambda: name in w.downloads_view.rows
                    and w.downloads_view.rows[name].state.text() == "Failed", timeout=30_000)
    error = w.downloads_view.rows[name].error
    host = hub.url.split("//", 1)[1]
    assert error.text().startswith(f"Ember cannot reach {host}: this computer seems to be offline")
    assert "Error" in error.toolTip()
    rec = w.recommended.rows[name]
    assert rec.error.isVisible() and rec.button.text() == "Try again" and rec.button.isEnabled()
    hub.start()  # so the fixture can stop it


# -- best fit first, filters remembered -------------------------------------------------------------

def test_best_fit_first_ranks_by_expected_speed_on_a_two_core_cpu_machine(qtbot, fresh_home, mgr):
    laptop = hardware.HardwareProfile.load(LAPTOP)
    hw = dataclasses.replace(laptop, cpu_cores=2, ram_total_bytes=24 * 2**30, ram_available_bytes=20 * 2**30)
    w = open_window(qtbot, mgr, hw)
    assert w.sort_combo.currentText() == "Best fit first"
    order = visible_order(w)
    big = "llama-3.1-8b-instruct-pytorch"  # 16 GB of bf16 weights: runs here, about 1 token/s
    assert w.row_widget(big).row["fit"] == "cpu"
    speeds = [w.row_widget(n).row["expected_tokens_per_second"] for n in order]
    known = [s for s in speeds if s is not None]
    assert known == sorted(known, reverse=True), "fastest on this computer first"
    assert order.index(big) > 20, f"a 16 GB model ranks {order.index(big) + 1}th on 2 cores"
    assert "starter" in order[:3]  # among the fastest (the catalog's 241 MB Gemma 3 270M may edge it out)
    assert "tokens/s here (estimate)" in w.row_widget("starter").numbers.text()


def test_filters_are_remembered_across_restarts(qtbot, fresh_home, mgr):
    w = open_window(qtbot, mgr)
    w.only_runnable.setChecked(True)
    w.sort_combo.setCurrentText("Name")
    qtbot.keyClicks(w.search, "qwen3")
    w.close()  # a restart: the window goes, the settings file stays
    assert settings.get("models_only_runnable") is True and settings.get("models_sort") == "name"
    assert settings.get("models_search") == "qwen3"
    again = open_window(qtbot, mgr)
    assert again.only_runnable.isChecked() and again.sort_combo.currentText() == "Name"
    assert again.search.text() == "qwen3"
    shown = visible_order(again)
    assert shown and all("qwen3" in n and again.row_widget(n).row["fit"] in ("gpu", "partial", "cpu")
                         for n in shown)
    assert shown == sorted(shown, key=lambda n: (again.row_widget(n).row["display_name"] or n).lower())


# -- Open folder ------------------------------------------------------------------------------------

def test_open_folder_without_a_file_manager_shows_the_path_with_copy(qtbot, hub, mgr):
    from engines.models import hub as H
    w = open_window(qtbot, mgr, hardware.HardwareProfile.load(LAPTOP))
    panel = w.downloads_view
    assert not panel.path_note.isVisible()
    assert panel.open_folder() is False  # offscreen Qt, like a desktop without a file manager
    assert panel.path_note.isVisible() and str(H.cache()) in panel.path_note.label.text()
    panel.path_note.copy_button.click()
    assert QGuiApplication.clipboard().text() == str(H.cache())
    assert panel.path_note.copy_button.text() == "Copied"


def test_open_folder_with_a_file_manager_opens_it(qtbot, hub, mgr):
    from PySide6.QtCore import QObject, Slot
    from PySide6.QtGui import QDesktopServices

    class FileManager(QObject):  # stands in for the file manager this machine lacks
        def __init__(self):
            super().__init__()
            self.opened = []

        @Slot("QUrl")
        def open(self, url):
            self.opened.append(url.toLocalFile())

    fm = FileManager()
    QDesktopServices.setUrlHandler("file", fm, "open")
    try:
        w = open_window(qtbot, mgr, hardware.HardwareProfile.load(LAPTOP))
        assert w.downloads_view.open_folder() is True
        from engines.models import hub as H
        assert fm.opened == [str(H.cache())] and not w.downloads_view.path_note.isVisible()
    finally:
        QDesktopServices.unsetUrlHandler("file")


# -- Refresh lists the catalog on the Hub again ----------------------------------------------------------

def test_refresh_lists_the_hub_again_and_says_which_entries_changed(qtbot, hub, mgr, tmp_path):
    from engines.models import catalog
    changed = "llama-3.1-8b-instruct-q4_k_m"
    spec = catalog.resolve(changed)
    blob = tmp_path / "new.gguf"
    blob.write_bytes(b"GGUF" + b"\0" * 2044)
    hub.add(spec.repo, spec.files[0], blob)  # re-published with other bytes; every other repository: 404
    w = open_window(qtbot, mgr, hardware.HardwareProfile.load(LAPTOP))
    assert "Hugging Face Hub" in w.refresh_button.toolTip()
    try:
        with qtbot.waitSignal(w.relisted, timeout=120_000) as got:
            qtbot.mouseClick(w.refresh_button, Qt.LeftButton)
        result = got.args[0]
        assert changed in {c.variant for c in result.changes} and result.failed
        qtbot.waitUntil(lambda: w.notice.isVisible() and "entry changed" in w.notice_label.text(), timeout=10_000)
        text = w.notice_label.text()
        assert "could not list" in text and "bytes -> 2,048" in text
        qtbot.waitUntil(lambda: not w._loading and w.row_widget(changed) is not None, timeout=60_000)
        assert w.row_widget(changed).row["size_bytes"] == 2048  # the list now rests on what the Hub has
        assert w.refresh_button.isEnabled()
    finally:
        catalog.reload()
