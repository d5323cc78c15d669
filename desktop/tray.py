"""The tray icon: engine state at a glance (icon shape + tooltip) and the app's menu.

It only shows state and emits what the user asked for; :mod:`desktop.app` acts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QGuiApplication
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from engines.running.manager import EngineManager

from . import icons

log = logging.getLogger(__name__)


@dataclass
class TrayState:
    state: str        # idle | loading | ready | error | unloaded
    tooltip: str


def compute_state(manager: EngineManager, last_error: str | None = None) -> TrayState:
    """What the tray shows, from the manager's state (loading wins, then ready, error, unloaded)."""
    running = manager.running()
    loading = manager.loading()
    if loading:
        return TrayState("loading", f"Ember: loading {', '.join(loading)}…")
    if running:
        names = ", ".join(r.plan.model.name for r in running)
        return TrayState("ready", f"Ember: {names} ready")
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
    stop_requested = Signal(str)          # model name
    autostart_toggled = Signal(bool)

    def __init__(self, manager: EngineManager, autostart_on: bool = False, parent: QObject | None = None):
        super().__init__(parent)
        self.manager = manager
        self.last_error: str | None = None
        self.state = TrayState("idle", "Ember")
        self.icon = QSystemTrayIcon(icons.tray_icon("idle"), self)
        self.menu = QMenu()
        self.menu.setObjectName("ember-tray-menu")
        self.menu.aboutToShow.connect(self.rebuild_menu)
        self._autostart_on = autostart_on
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

    def set_error(self, message: str | None) -> None:
        self.last_error = message
        self.refresh()

    def refresh(self) -> None:
        state = compute_state(self.manager, self.last_error)
        if state != self.state:
            self.state = state
            self.icon.setIcon(icons.tray_icon(state.state))
            self.icon.setToolTip(state.tooltip)
            log.info("tray: %s", state.tooltip)
        if not self.menu.isVisible():
            self.rebuild_menu()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.chat_requested.emit()

    def rebuild_menu(self) -> None:
        m = self.menu
        m.clear()
        m.addAction("Chat", self.chat_requested.emit)
        m.addAction("Models…", self.models_requested.emit)
        running = self.manager.running()
        loading = self.manager.loading()
        unloaded = self.manager.unloaded()
        if running or loading or unloaded:
            m.addSeparator()
        for run in running:
            name = run.plan.model.name
            sub = m.addMenu(f"{name} (ready)")
            sub.addAction("Stop", lambda n=name: self.stop_requested.emit(n))
            url = run.proc.base_url
            sub.addAction(f"Copy API URL ({url})", lambda u=url: QGuiApplication.clipboard().setText(u))
            sub.addAction("View log", lambda n=name: self.log_requested.emit(n))
        for name in loading:
            act = m.addAction(f"{name} (loading…)")
            act.setEnabled(False)
        for name in unloaded:
            act = m.addAction(f"{name} (unloaded while idle)")
            act.setEnabled(False)
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

    def _toggle_autostart(self, on: bool) -> None:
        self._autostart_on = on
        self.autostart_toggled.emit(on)
