"""The tray icon: engine state at a glance (icon shape + tooltip) and the app's menu.

It only shows state and emits what the user asked for; :mod:`desktop.app` acts.
An engine that died by itself shows as an error with the reason, in the tooltip
and the menu; downloads in progress show as a bar on the icon, in the tooltip
and as a menu line (:meth:`Tray.show_download`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from PySide6.QtCore import QObject, QRect, Qt, Signal
from PySide6.QtGui import QAction, QColor, QGuiApplication, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from engines.gateway import keys as gateway_keys
from engines.running.manager import EngineManager

from . import icons
from .widgets import ACCENT

log = logging.getLogger(__name__)

ICON_PX = 64  # the size the download bar is drawn at (the tray scales it)


@dataclass
class TrayState:
    state: str        # idle | loading | ready | error | unloaded
    tooltip: str


def download_line(name: str, fraction: float) -> str:
    return f"Downloading {name}… {fraction * 100:.0f} %"


def with_progress(icon: QIcon, fraction: float) -> QIcon:
    """The state icon with a progress bar across its bottom (a download in progress)."""
    pixmap = icon.pixmap(ICON_PX, ICON_PX)
    if pixmap.isNull():
        pixmap = QPixmap(ICON_PX, ICON_PX)
        pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    bar = QRect(2, ICON_PX - 14, ICON_PX - 4, 12)
    painter.fillRect(bar, QColor(30, 30, 30, 230))
    inner = bar.adjusted(2, 2, -2, -2)
    inner.setWidth(max(1, round(inner.width() * min(max(fraction, 0.0), 1.0))))
    painter.fillRect(inner, QColor(ACCENT))
    painter.end()
    return QIcon(pixmap)


def compute_state(manager: EngineManager, last_error: str | None = None) -> TrayState:
    """What the tray shows, from the manager's state (loading wins, then ready, crashed, error, unloaded)."""
    running = manager.running()
    loading = manager.loading()
    crashed = manager.crashed()
    stopped = "; ".join(f"{name} stopped: engine {event.error.reason}" for name, event in crashed.items())
    if loading:
        return TrayState("loading", f"Ember: loading {', '.join(loading)}…")
    if running:
        names = ", ".join(r.plan.model.name for r in running)
        return TrayState("ready", f"Ember: {names} ready" + (f"; {stopped}" if stopped else ""))
    if crashed:
        return TrayState("error", f"Ember: {stopped}")
    if last_error:
        return TrayState("error", f"Ember: {last_error}")
    unloaded = manager.unloaded()
    if unloaded:
        return TrayState("unloaded", f"Ember: {', '.join(unloaded)} unloaded while idle (starts again when you chat)")
    return TrayState("idle", "Ember: no model running")


class Tray(QObject):
    """Owns the QSystemTrayIcon and its menu; the menu is rebuilt each time it opens."""

    chat_requested = Signal()
    models_requested = Signal()
    settings_requested = Signal()
    logs_requested = Signal()
    log_requested = Signal(str)           # model name: view that launch's log
    about_requested = Signal()
    quit_requested = Signal()
    stop_requested = Signal(str)          # model name (for a crashed one: forget it)
    restart_requested = Signal(str)       # model name: start a crashed engine again
    cluster_stop_requested = Signal(str, str)  # cluster, model uid: stop it on the cluster
    autostart_toggled = Signal(bool)

    def __init__(self, manager: EngineManager, autostart_on: bool = False, parent: QObject | None = None):
        super().__init__(parent)
        self.manager = manager
        self.last_error: str | None = None
        self.state = TrayState("idle", "Ember")
        self.downloads: dict[str, float] = {}   # name -> fraction done (0..1)
        self._download_actions: dict[str, QAction] = {}
        self.icon = QSystemTrayIcon(icons.tray_icon("idle"), self)
        self.menu = QMenu()
        self.menu.setObjectName("ember-tray-menu")
        self.menu.aboutToShow.connect(self.rebuild_menu)
        self._autostart_on = autostart_on
        self.api_url: str | None = None     # the local API's base URL while it listens
        self.api_error: str | None = None   # why it does not (port taken...)
        self.api_starting = True            # until the app says how starting it went
        self.cluster_models: list[tuple[str, str]] = []  # (cluster, uid) running on the user's clusters
        self.rebuild_menu()
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self.refresh()

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    def set_autostart(self, on: bool) -> None:
        self._autostart_on = on
        self.rebuild_menu()

    def notify(self, title: str, message: str, msecs: int = 6000) -> None:
        """A balloon message from the tray icon (where the platform shows them)."""
        self.icon.showMessage(title, message, icons.app_icon(), msecs)

    def set_api(self, url: str | None, error: str | None = None) -> None:
        """The local API's address (None: off), and why it is off when it failed to start."""
        self.api_url, self.api_error, self.api_starting = url, error, False
        if error:
            self.notify("Ember's local API is off", error, 10000)
        self.rebuild_menu()

    def set_cluster_models(self, models: list[tuple[str, str]]) -> None:
        """The models running on the user's clusters (the app polls them off the GUI thread)."""
        if models != self.cluster_models:
            self.cluster_models = list(models)
            if not self.menu.isVisible():
                self.rebuild_menu()

    def copy_api_url(self) -> None:
        if self.api_url:
            QGuiApplication.clipboard().setText(self.api_url)

    def copy_api_key(self) -> None:
        QGuiApplication.clipboard().setText(gateway_keys.get())

    def set_error(self, message: str | None) -> None:
        self.last_error = message
        self.refresh()

    def show_download(self, name: str, fraction: float) -> None:
        """A download's progress (0..1) on the icon, in the tooltip and the menu; -1.0: it ended."""
        action = self._download_actions.get(name)
        if fraction < 0:
            if self.downloads.pop(name, None) is None:
                return
            log.info("tray: download of %s ended", name)
            if action is not None:
                action.setText(f"{name}: download ended")  # an open menu says so; the next one drops it
        else:
            if name not in self.downloads:
                log.info("tray: downloading %s", name)
            self.downloads[name] = fraction
            if action is not None:
                action.setText(download_line(name, fraction))  # an open menu follows too
        self._show_state()
        listed = set(self._download_actions) == set(self.downloads)
        if not listed and not self.menu.isVisible():
            self.rebuild_menu()

    def tooltip(self) -> str:
        lines = [self.state.tooltip] + [download_line(n, f) for n, f in self.downloads.items()]
        return "\n".join(lines)

    def _show_state(self) -> None:
        icon = icons.tray_icon(self.state.state)
        if self.downloads:
            icon = with_progress(icon, min(self.downloads.values()))
        self.icon.setIcon(icon)
        self.icon.setToolTip(self.tooltip())

    def refresh(self) -> None:
        state = compute_state(self.manager, self.last_error)
        if state != self.state:
            self.state = state
            self._show_state()
            log.info("tray: %s", state.tooltip)
        if not self.menu.isVisible():
            self.rebuild_menu()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.chat_requested.emit()

    def rebuild_menu(self) -> None:
        m = self.menu
        m.clear()
        self._download_actions.clear()
        m.addAction("Chat", self.chat_requested.emit)
        m.addAction("Models…", self.models_requested.emit)
        running = self.manager.running()
        loading = self.manager.loading()
        unloaded = self.manager.unloaded()
        crashed = self.manager.crashed()
        if running or loading or unloaded or crashed or self.downloads or self.cluster_models:
            m.addSeparator()
        self._engine_items(running, loading, unloaded, crashed)
        for cluster, uid in self.cluster_models:
            sub = m.addMenu(f"{cluster}/{uid} (on the cluster)")
            sub.addAction("Stop", lambda c=cluster, u=uid: self.cluster_stop_requested.emit(c, u))
        for name, fraction in self.downloads.items():
            act = m.addAction(download_line(name, fraction))
            act.setEnabled(False)
            self._download_actions[name] = act
        m.addSeparator()
        self._api_items()
        m.addSeparator()
        autostart = QAction("Start at login", m, checkable=True)
        autostart.setChecked(self._autostart_on)
        autostart.toggled.connect(self._toggle_autostart)
        m.addAction(autostart)
        m.addAction("Settings…", self.settings_requested.emit)
        m.addAction("Show logs", self.logs_requested.emit)
        m.addAction("About Ember", self.about_requested.emit)
        m.addSeparator()
        m.addAction("Quit", self.quit_requested.emit)

    def _api_items(self) -> None:
        """The one address outside tools use: its URL and key to copy (or why it is off)."""
        m = self.menu
        if self.api_url:
            head = m.addAction(f"Local API: {self.api_url}")
        elif self.api_starting:
            head = m.addAction("Local API: starting…")
        else:
            head = m.addAction("Local API: off" + (" (port in use: see Settings)" if self.api_error else ""))
            head.setToolTip(self.api_error or "Turned off in Settings")
        head.setEnabled(False)
        url = m.addAction("Copy API URL", self.copy_api_url)
        url.setEnabled(bool(self.api_url))
        key = m.addAction("Copy API key", self.copy_api_key)
        key.setEnabled(bool(self.api_url))

    def _engine_items(self, running, loading, unloaded, crashed) -> None:
        m = self.menu
        for run in running:
            name = run.plan.model.name
            sub = m.addMenu(f"{name} (ready)")
            sub.addAction("Stop", lambda n=name: self.stop_requested.emit(n))
            sub.addAction("View log", lambda n=name: self.log_requested.emit(n))
        for name in loading:
            act = m.addAction(f"{name} (loading…)")
            act.setEnabled(False)
        for name in unloaded:
            act = m.addAction(f"{name} (unloaded while idle)")
            act.setEnabled(False)
        for name, event in crashed.items():
            sub = m.addMenu(f"{name} (stopped: engine {event.error.reason})")
            sub.addAction("Start again", lambda n=name: self.restart_requested.emit(n))
            sub.addAction("View log", lambda n=name: self.log_requested.emit(n))
            sub.addAction("Dismiss", lambda n=name: self.stop_requested.emit(n))

    def _toggle_autostart(self, on: bool) -> None:
        self._autostart_on = on
        self.autostart_toggled.emit(on)
