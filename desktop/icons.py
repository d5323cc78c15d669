"""The ember icon family: the app icon and one tray icon per engine state.

The SVGs in resources/icons/ are the source; ``python -m desktop.icons`` renders
the PNG sizes next to them. At run time only PNGs are read (fast, no SVG module),
with the SVG as a fallback when a size is missing.
"""
from __future__ import annotations

import logging
import sys
from functools import lru_cache
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QIcon, QImage, QPainter

log = logging.getLogger(__name__)

ICON_DIR = Path(__file__).resolve().parent.parent / "resources" / "icons"
APP_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
TRAY_SIZES = (16, 22, 24, 32, 48, 64)
STATES = ("idle", "loading", "ready", "error", "unloaded")


def _icon_dir() -> Path:
    base = getattr(sys, "_MEIPASS", None)  # a frozen build keeps resources beside the executable
    if base and (Path(base) / "resources" / "icons").is_dir():
        return Path(base) / "resources" / "icons"
    return ICON_DIR


def _load(stem: str, sizes: tuple[int, ...]) -> QIcon:
    folder = _icon_dir()
    icon = QIcon()
    for size in sizes:
        png = folder / f"{stem}-{size}.png"
        if png.exists():
            icon.addFile(str(png))
    if icon.isNull():
        icon = QIcon(str(folder / f"{stem}.svg"))
    return icon


@lru_cache(maxsize=None)
def app_icon() -> QIcon:
    return _load("ember", APP_SIZES)


@lru_cache(maxsize=None)
def tray_icon(state: str) -> QIcon:
    if state not in STATES:
        raise ValueError(f"unknown tray state {state!r}; one of {', '.join(STATES)}")
    return _load(f"tray-{state}", TRAY_SIZES)


def render_pngs(folder: Path = ICON_DIR) -> list[Path]:
    """Render every SVG to its PNG sizes (run after editing an SVG)."""
    from PySide6.QtSvg import QSvgRenderer  # lazily: the app itself reads PNGs and never loads QtSvg

    written = []
    for svg in sorted(folder.glob("*.svg")):
        renderer = QSvgRenderer(str(svg))
        sizes = APP_SIZES if svg.stem == "ember" else TRAY_SIZES
        for size in sizes:
            image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
            image.fill(Qt.GlobalColor.transparent)
            painter = QPainter(image)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            renderer.render(painter)
            painter.end()
            out = folder / f"{svg.stem}-{size}.png"
            image.save(str(out))
            written.append(out)
    return written


if __name__ == "__main__":
    _app = QGuiApplication(sys.argv)
    for p in render_pngs():
        print(p)
