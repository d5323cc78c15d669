"""The real tray: Ember as a real process under Xvfb with trayer as the XEmbed tray host.

Checks what a user sees: the icon is embedded in the panel, its menu opens on a
click, and without a tray host a normal window appears instead.
"""
from __future__ import annotations

import time

import pytest

from tests.helpers import screenshot_dir, wait_for
from tests.tray.xdesk import MISSING, SKIP_REASON, Desk, embedded_icon, start_app, stop_app, visible_windows, x

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=SKIP_REASON)]


def test_tray_icon_is_embedded_and_its_menu_opens(display, trayer):
    app = start_app(display)
    try:
        desk = Desk(display, app)  # waits for the icon inside trayer's panel
        w, h, ax, ay = embedded_icon(x(display, "xwininfo", "-root", "-tree"))
        assert w >= 16 and h >= 16
        menu, (_, _, _, height) = desk.open_menu("right click")
        assert height > 100  # a menu with its items, not a stray pixel
        x(display, "import", "-window", "root", "-crop", "440x260+840+540", "+repage",
          str(screenshot_dir() / "tray-menu.png"))
        x(display, "xdotool", "key", "Escape")
        wait_for(lambda: menu not in visible_windows(display, app.pid), 10, "the menu to close")

        x(display, "xdotool", "mousemove", *desk.icon_center)
        x(display, "xdotool", "click", "1")  # left click: the chat window
        assert desk.window("Ember", 30)
        assert app.poll() is None
        desk.click_item(-1, "Quit")  # the menu again, its last item
        wait_for(lambda: app.poll() is not None, 30, "Quit from the tray menu to end the app")
    finally:
        out = stop_app(app)
    assert app.returncode == 0, out


def test_without_a_tray_host_a_normal_window_appears(display):
    app = start_app(display)
    try:
        windows = wait_for(lambda: visible_windows(display, app.pid), 60, "Ember's window")
        name = x(display, "xdotool", "getwindowname", windows[0]).strip()
        assert name == "Ember"
        time.sleep(0.3)
        x(display, "import", "-window", windows[0], str(screenshot_dir() / "fallback-window-x11.png"))
    finally:
        out = stop_app(app)
    assert app.returncode == 0, out
