"""What of the macOS build can be checked on Linux: the Info.plist, the icon set, the scripts,
and that the spec hands both to PyInstaller's BUNDLE. The .app/.dmg themselves need a Mac."""
from __future__ import annotations

import ast
import os
import sys
import plistlib
import subprocess
from pathlib import Path

from installers import linux
from installers.macos import info_plist as ip
from installers.version import project_version
from tests.conftest import ROOT

MACOS = ROOT / "installers" / "macos"


def test_info_plist_is_menu_bar_only_with_the_version():
    version = project_version()
    plist = plistlib.loads(ip.dumps(version))
    assert plist["LSUIElement"] is True
    assert plist["CFBundleShortVersionString"] == version and plist["CFBundleVersion"] == version
    assert plist["CFBundleIdentifier"] == ip.BUNDLE_ID == "io.github.ember.Ember"
    assert plist["CFBundleIconFile"] == "Ember.icns"
    assert plist["CFBundleExecutable"] == "ember"  # PyInstaller's MacOS/ember
    assert plist["CFBundlePackageType"] == "APPL"
    assert plist["LSMinimumSystemVersion"] == "14.0"  # PySide6 6.12


def test_info_plist_command_prints_the_pyproject_version():
    out = subprocess.run([sys.executable, "-m", "installers.macos.info_plist"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    assert plistlib.loads(out)["CFBundleShortVersionString"] == project_version()


def test_spec_bundles_the_app_with_the_generated_plist():
    tree = ast.parse((ROOT / "installers" / "ember.spec").read_text())
    calls = {n.func.id: n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    bundle = calls["BUNDLE"]
    kw = {k.arg: k.value for k in bundle.keywords}
    assert ast.literal_eval(kw["name"]) == "Ember.app"
    assert isinstance(kw["info_plist"], ast.Call) and kw["info_plist"].func.id == "info_plist"
    assert kw["version"].id == "VERSION" and kw["bundle_identifier"].id == "BUNDLE_ID"


def test_iconset_has_every_size_iconutil_expects(tmp_path):
    r = subprocess.run([str(MACOS / "make_icns.sh")], env={**os.environ, "ICONSET_ONLY": "1", "OUT": str(tmp_path)},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    iconset = Path(r.stdout.strip())
    assert iconset.name == "Ember.iconset"
    for name in ("icon_16x16.png", "icon_16x16@2x.png", "icon_32x32.png", "icon_32x32@2x.png", "icon_128x128.png",
                 "icon_128x128@2x.png", "icon_256x256.png", "icon_256x256@2x.png", "icon_512x512.png"):
        points = int(name.split("_")[1].split("x")[0])
        pixels = points * (2 if "@2x" in name else 1)
        assert linux.png_size(iconset / name) == (pixels, pixels), name


def test_scripts_parse_and_entitlements_are_a_plist():
    for script in ("make_icns.sh", "make_dmg.sh", "build.sh"):
        path = MACOS / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    ent = plistlib.loads((MACOS / "entitlements.plist").read_bytes())
    assert ent["com.apple.security.cs.allow-unsigned-executable-memory"] is True
    build = (MACOS / "build.sh").read_text()
    assert "--options runtime --timestamp" in build and "notarytool submit" in build and "stapler staple" in build


def test_make_dmg_refuses_to_run_without_a_mac_or_an_app(tmp_path):
    r = subprocess.run([str(MACOS / "make_dmg.sh")], env={**os.environ, "APP": str(tmp_path / "Ember.app")},
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "build it first" in r.stderr
