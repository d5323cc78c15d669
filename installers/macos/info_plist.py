"""Ember.app's Info.plist, generated with plistlib so it can be reviewed on any OS.

The spec passes :func:`info_plist` to PyInstaller's BUNDLE on macOS;
``python -m installers.macos.info_plist VERSION`` prints it.
"""
from __future__ import annotations

import plistlib
import sys

BUNDLE_ID = "io.github.ember.Ember"
#: PySide6 6.12's Qt needs macOS 14 or newer.
MINIMUM_MACOS = "14.0"


def info_plist(version: str, icon_file: str | None = "Ember.icns") -> dict:
    """Keys for Ember.app: menu-bar only (LSUIElement), version, bundle id, icon."""
    plist = {
        "CFBundleName": "Ember",
        "CFBundleDisplayName": "Ember",
        "CFBundleIdentifier": BUNDLE_ID,
        "CFBundleExecutable": "ember",
        "CFBundlePackageType": "APPL",
        "CFBundleShortVersionString": version,
        "CFBundleVersion": version,
        "CFBundleInfoDictionaryVersion": "6.0",
        "LSUIElement": True,  # lives in the menu bar: no Dock icon, no app menu
        "LSMinimumSystemVersion": MINIMUM_MACOS,
        "LSApplicationCategoryType": "public.app-category.developer-tools",
        "NSHighResolutionCapable": True,
        "NSSupportsAutomaticGraphicsSwitching": True,
        "NSHumanReadableCopyright": "Apache-2.0",
    }
    if icon_file:
        plist["CFBundleIconFile"] = icon_file
    return plist


def dumps(version: str, icon_file: str | None = "Ember.icns") -> bytes:
    return plistlib.dumps(info_plist(version, icon_file), sort_keys=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        v = sys.argv[1]
    else:
        from installers.version import project_version
        v = project_version()
    sys.stdout.buffer.write(dumps(v))
