"""The desktop app: one instance, a tray icon (or a normal window where there is no tray).

Start-up stays light so the tray icon shows fast: no hardware detection, no
model reads and no heavy imports before the icon is up; the chat window is
built when first needed. Quit (tray menu, Ctrl+Q, SIGTERM, SIGINT) stops every
engine this app started and ends the process whatever windows are open: it
leaves the event loop with ``exit(0)``, not ``quit()``, because Qt's quit asks
every window to close and gives up when one refuses (the chat window hides to
the tray instead of closing), which left a ghost process with a window up.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import time

from PySide6.QtCore import QObject, QThread, QTimer, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon

from engines import autostart
from engines import logfile
from engines import paths
from engines import settings
from engines.cluster import store as cluster_store
from engines.gateway.config import GatewayConfig
from engines.models import store as model_store
from engines.running.manager import EngineManager
from engines.running.supervisor import EngineExited
from engines.version import version

from . import icons
from .bridge import GuiThreadCollector, ManagerBridge, run_async
from .folder import FolderDialog, open_folder
from .local_api import LocalApi
from .tray import Tray

log = logging.getLogger(__name__)
ipc_log = logging.getLogger("desktop.ipc")

SHOW = b"show\n"
OK = b"ok\n"


def server_name() -> str:
    """The single-instance socket: one per EMBER_HOME / user, so test homes never collide.

    On Unix it lives in a private folder of this user whose owner and mode are checked
    (:func:`engines.paths.socket_path`): another user cannot squat it and answer for Ember."""
    if os.name == "nt":
        digest = hashlib.sha1(str(paths.runtime_dir()).encode()).hexdigest()[:16]
        return f"ember-{digest}"
    try:
        return str(paths.socket_path("ember-app"))
    except OSError as exc:  # no private folder at all: Ember runs without the single-instance check
        ipc_log.warning("no private folder for the single-instance socket: %s", exc)
        return ""


def hand_over(name: str | None = None, timeout_ms: int = 2000) -> bool:
    """Ask a running Ember to show its window; True if one answered."""
    name = name or server_name()
    if not name:
        return False
    sock = QLocalSocket()
    sock.connectToServer(name)
    if not sock.waitForConnected(timeout_ms):
        return False
    sock.write(SHOW)
    sock.flush()
    sock.waitForBytesWritten(timeout_ms)
    answered = sock.waitForReadyRead(timeout_ms) and sock.readAll().data().startswith(b"ok")
    sock.disconnectFromServer()
    return answered


class SingleInstance(QObject):
    """Listens for later starts; each one asks us to show the chat window."""

    show_requested = Signal()

    def __init__(self, name: str | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.name = name or server_name()
        self.server = QLocalServer(self)
        self.server.newConnection.connect(self._connection)

    def listen(self) -> bool:
        if not self.name:
            return False
        QLocalServer.removeServer(self.name)  # a stale socket left by a crashed instance
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)  # 0700: this user only
        ok = self.server.listen(self.name)
        if not ok:
            ipc_log.warning("cannot listen on %s: %s", self.name, self.server.errorString())
        return ok

    def close(self) -> None:
        """Stop answering (quitting): a start from now on is a fresh app, never a hand-over to us."""
        if self.server.isListening():
            self.server.close()
            QLocalServer.removeServer(self.name)
            ipc_log.info("no longer answering later starts")

    def _connection(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            sock.readyRead.connect(lambda s=sock: self._read(s))
            sock.disconnected.connect(sock.deleteLater)

    def _read(self, sock: QLocalSocket) -> None:
        data = sock.readAll().data()
        if data.startswith(SHOW.strip()):
            ipc_log.info("show request from a second start")
            sock.write(OK)
            sock.flush()
            self.show_requested.emit()


#: How often the tray asks the user's clusters what runs there.
CLUSTER_POLL_MS = int(os.environ.get("EMBER_CLUSTER_POLL_MS", "30000"))


class EmberApp(QObject):
    """Wires the tray, the chat window and the engine manager together."""

    quitting = Signal()  # Quit began: windows are gone, engines are being stopped

    def __init__(self, qapp: QApplication, use_tray: bool | None = None, started_at: float | None = None):
        super().__init__()
        self.qapp = qapp
        self.started_at = started_at or time.monotonic()
        self.values = settings.load()
        self.manager = EngineManager(idle_timeout=settings.idle_timeout_seconds(self.values),
                                     max_loaded=GatewayConfig.from_settings(self.values).max_loaded)
        self.bridge = ManagerBridge(self.manager, self)
        self.local_api = LocalApi(self.manager, self)
        self.chat = None
        self.models_window = None
        self._folder_dialog: FolderDialog | None = None
        self._quitting = False
        if use_tray is None:
            use_tray = os.environ.get("EMBER_NO_TRAY") != "1" and QSystemTrayIcon.isSystemTrayAvailable()
        self.use_tray = use_tray
        self.tray = None
        if use_tray:
            qapp.setQuitOnLastWindowClosed(False)
            self.tray = self._make_tray()
            self.tray.show()
            log.info("tray icon shown %.3f s after start", time.monotonic() - self.started_at)
        else:
            qapp.setQuitOnLastWindowClosed(True)
            self.show_chat()
            log.info("no system tray: main window shown %.3f s after start", time.monotonic() - self.started_at)
        if self.tray is not None:
            self.local_api.changed.connect(lambda: self.tray.set_api(self.local_api.url, self.local_api.error))
        QTimer.singleShot(0, lambda: self.local_api.apply(self.values))  # after the tray shows
        qapp.aboutToQuit.connect(self._about_to_quit)
        self.cluster_timer = QTimer(self, interval=CLUSTER_POLL_MS)
        self.cluster_timer.timeout.connect(self.refresh_clusters)
        if self.tray is not None:
            self.cluster_timer.start()
            QTimer.singleShot(0, self.refresh_clusters)
        interval = int(os.environ.get("EMBER_IDLE_CHECK_MS", "30000"))
        self.idle_timer = QTimer(self, interval=interval)
        self.idle_timer.timeout.connect(self.check_idle)
        self.idle_timer.start()

    def _make_tray(self) -> Tray:
        t = Tray(self.manager, autostart.enabled())
        t.chat_requested.connect(self.show_chat)
        t.models_requested.connect(self.show_models)
        t.settings_requested.connect(self.show_settings)
        t.logs_requested.connect(self.show_logs)
        t.log_requested.connect(self.show_model_log)
        t.about_requested.connect(self.show_about)
        t.quit_requested.connect(self.quit)
        t.stop_requested.connect(self.stop_model)
        t.restart_requested.connect(self.restart_model)
        t.autostart_toggled.connect(self.set_autostart)
        t.cluster_stop_requested.connect(self.stop_on_cluster)
        self.bridge.changed.connect(t.refresh)
        self.bridge.ready.connect(lambda *_: t.set_error(None))
        self.bridge.failed.connect(self._engine_failed)
        return t

    # -- windows ----------------------------------------------------------------------
    # The windows' and dialogs' modules are imported when one is first built: the tray
    # icon shows before the chat window's and the models window's imports are paid for.
    def chat_window(self):
        if self.chat is None:
            from .chat_window import ChatWindow
            self.chat = ChatWindow(self.manager, self.bridge)
            self.chat.keep_in_tray = self.use_tray
            self.chat.models_requested.connect(self.show_models)
            self.chat.settings_requested.connect(lambda: self.show_settings())
            self.chat.logs_requested.connect(self.show_logs)
            self.chat.about_requested.connect(self.show_about)
            self.chat.quit_requested.connect(self.quit)
            self.chat.hidden_to_tray.connect(self._hidden_to_tray)
            self.chat.download_requested.connect(self.download_model)
            self.chat.setting_requested.connect(self.show_settings)
            self.chat.cluster_launch_requested.connect(self.launch_on_cluster)
        return self.chat

    def show_chat(self) -> None:
        self.chat_window().show_and_raise()

    def show_models(self) -> None:
        if self.models_window is None:
            from .models_window import ModelsWindow
            self.models_window = ModelsWindow(self.manager, bridge=self.bridge)
            self.models_window.launch_requested.connect(self.launch_plan)
            self.connect_models_window(self.models_window)
        self.models_window.show()
        self.models_window.raise_()
        self.models_window.activateWindow()

    def download_model(self, name: str) -> None:
        """A fix's "Download it": the models window, with the download under way in its downloads panel."""
        self.show_models()
        self.models_window.downloads_view.add(name)

    def launch_on_cluster(self, cluster: str, model: str) -> None:
        """A fix's "Launch it on the cluster": the models window, the launch under way in the cluster's panel."""
        self.show_models()
        clusters = self.models_window.clusters
        if cluster not in clusters.panels:
            clusters.reload()  # added since the window was built
        panel = clusters.panels.get(cluster)
        if panel is None:
            self.models_window.show_notice(f"There is no cluster named {cluster}: add it in Settings, Clusters.",
                                           error=True)
            return
        panel.launch(model)

    def connect_models_window(self, window: QObject) -> bool:
        """Show the models window's downloads (``download_progress(name, fraction)``) on the tray icon."""
        if self.tray is None:
            return False
        window.download_progress.connect(self.tray.show_download)
        return True

    def launch_plan(self, plan) -> None:
        """A launch asked for by the models window: start it off the GUI thread, then open the chat."""
        self.chat_window().start_launch(plan, then=self.show_chat)
        if not self.use_tray:
            self.show_chat()

    def show_settings(self, key: str | None = None, value: object | None = None):
        """The Settings dialog; ``key``: opened at that setting with ``value`` offered (a fix's)."""
        from .settings_dialog import SettingsDialog
        dialog = SettingsDialog(self.chat if self.chat and self.chat.isVisible() else None)
        dialog.accepted.connect(self.apply_settings)
        dialog.clusters_changed.connect(self._clusters_changed)
        dialog.open()
        if key:
            dialog.focus_key(key, value)
        self._settings_dialog = dialog
        return dialog

    def _clusters_changed(self) -> None:
        """Settings added or removed a cluster: the models window shows the new list."""
        if self.models_window is not None:
            self.models_window.clusters.reload()

    def apply_settings(self) -> None:
        self.values = settings.load()
        self.manager.idle_timeout = settings.idle_timeout_seconds(self.values)
        self.manager.max_loaded = GatewayConfig.from_settings(self.values).max_loaded
        self.set_autostart(bool(self.values.get("start_at_login")))
        self.local_api.apply(self.values)

    def set_autostart(self, on: bool) -> None:
        try:
            autostart.set_enabled(on)
        except (OSError, autostart.AutostartUnsupported) as exc:
            log.warning("start at login: %s", exc)
        settings.set("start_at_login", on)
        if self.tray is not None:
            self.tray.set_autostart(on)

    def show_logs(self) -> FolderDialog | None:
        """The log folder in the file manager; without one, its path with a Copy button."""
        self._folder_dialog = open_folder(paths.log_dir(), "Log folder")
        return self._folder_dialog

    def show_model_log(self, name: str) -> None:
        run = self.manager.get(name)  # a crashed one too: its log says why
        if run is not None:
            self.chat_window().show_log(run.proc.log_path)

    def show_about(self) -> None:
        box = QMessageBox(QMessageBox.Icon.NoIcon, "About Ember",
                          f"<b>Ember {version()}</b><p>Run large language models on this computer.</p>"
                          f"<p>Logs: {paths.log_dir()}</p>", QMessageBox.StandardButton.Close, self.chat)
        box.setIconPixmap(icons.app_icon().pixmap(64, 64))
        box.open()
        self._about = box

    # -- engines ----------------------------------------------------------------------
    def stop_model(self, name: str) -> None:
        run_async(lambda: self.manager.stop(name), name=f"stop-{name}")

    def restart_model(self, name: str) -> None:
        """Start a crashed engine again with the plan it had."""
        crash = self.manager.crashed().get(name)
        if crash is not None:
            self.launch_plan(crash.plan)

    def refresh_clusters(self) -> None:
        """What runs on the user's clusters, for the tray (asked off the GUI thread; none: no request)."""
        if self.tray is None or not cluster_store.list_clusters():
            return
        from engines.cluster import ops as cluster_ops  # its HTTP client and diagnosis: after the tray shows
        run_async(lambda: [tuple(ep.name.split("/", 1)) for ep in cluster_ops.endpoints()],
                  self.tray.set_cluster_models, name="cluster-list", owner=self)

    def stop_on_cluster(self, cluster: str, uid: str) -> None:
        """The tray's Stop for a model on a cluster; the tray says so when the cluster refuses."""
        from engines.cluster import ops as cluster_ops

        def failed(exc: BaseException) -> None:
            if self.tray is not None:
                self.tray.notify(f"Could not stop {uid} on {cluster}", str(exc))
        run_async(lambda: cluster_ops.stop(cluster, uid), lambda _: self.refresh_clusters(), failed,
                  name=f"cluster-stop-{uid}", owner=self)

    def check_idle(self) -> None:
        if self.manager.idle_timeout is not None and self.manager.running():
            run_async(self.manager.unload_idle, name="idle-unload")

    def _engine_failed(self, name: str, exc: Exception) -> None:
        if isinstance(exc, EngineExited):
            return  # a crash: the tray reads it from manager.crashed(), until relaunched or dismissed
        if self.tray is not None:
            message = getattr(exc, "message", None) or str(exc)
            self.tray.set_error(f"{name} failed: {message.splitlines()[0] if message else ''}")

    def _hidden_to_tray(self) -> None:
        if self.tray is not None and not settings.get("tray_notice_shown"):
            self.tray.notify("Ember is still running",
                             "Ember keeps running in the tray. Quit it from the tray menu.")
            settings.set("tray_notice_shown", True)

    # -- quit -------------------------------------------------------------------------
    def quit(self) -> None:
        """Hide every window, stop every engine, leave the event loop with status 0.

        Safe to call again (a second Quit or SIGTERM while engines stop): it only leaves the loop."""
        if not self._quitting:
            self._quitting = True
            began = time.monotonic()
            log.info("quit: stopping %d engine(s)", len(self.manager.running()))
            self.quitting.emit()
            if self.tray is not None:
                self.tray.hide()
            for window in self.qapp.topLevelWidgets():
                window.hide()
            if self.local_api.gateway is not None:
                self.local_api.gateway.begin_stop()  # no new request starts an engine
            self.manager.shutdown()  # first: a reply streaming from a stopped engine ends at once
            self.local_api.stop()
            stopped = time.monotonic()
            if self.chat is not None:
                self.chat.keep_in_tray = False
                self.chat.shutdown()
            log.info("quit: engines stopped in %.2f s, then the reply thread in %.2f s", stopped - began,
                     time.monotonic() - stopped)
        if QThread.currentThread().loopLevel() > 0:  # before exec() there is no loop to leave
            self.qapp.exit(0)

    def _about_to_quit(self) -> None:
        if self.chat is not None:
            self.chat.shutdown()
        self.manager.stop_all()


def _setup_logging() -> None:
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        for h in root.handlers:
            if h.level == logging.NOTSET:
                h.setLevel(logging.WARNING)
        if not root.handlers:
            h = logging.StreamHandler()
            h.setLevel(logging.WARNING)
            root.addHandler(h)
        root.setLevel(logging.INFO)
    try:
        fh = logfile.file_handler(paths.log_dir() / "ember.log")  # 0600; a full disk stops it quietly
    except OSError:
        return
    if fh is None:
        return
    fh.setLevel(logging.INFO)
    fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.addHandler(fh)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    _setup_logging()
    if hand_over():  # before any window-system connection: a second start exits at once
        print("Ember is already running: its window is shown.")
        return 0
    try:
        model_store.clean_stale_partials()  # half a starter left by a crash or a full disk
    except OSError as exc:
        log.info("cannot clean stale partial files: %s", exc)
    qapp = QApplication.instance() or QApplication(["ember", *(argv or [])])
    qapp.setApplicationName("Ember")
    qapp.setDesktopFileName("ember")
    qapp.setWindowIcon(icons.app_icon())
    instance = SingleInstance()
    instance.listen()
    app = EmberApp(qapp, started_at=started)
    collector = GuiThreadCollector(qapp).start()  # Qt objects in cycles die on the GUI thread
    instance.show_requested.connect(app.show_chat)
    app.quitting.connect(instance.close)
    # Ctrl-C / SIGTERM quit cleanly (engines stopped); a timer lets Python see the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: QTimer.singleShot(0, app.quit))
    tick = QTimer(interval=250)
    tick.timeout.connect(lambda: None)
    tick.start()
    code = qapp.exec()
    log.info("exit %s", code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
