"""Build Ember's artefacts: ``python -m installers.build [bundle|deb|tarball|appimage|all]``.

``bundle`` runs PyInstaller on installers/ember.spec (dist/ember/); the Linux steps package
that onedir bundle. Every artefact carries the pyproject version in its name and metadata.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from . import linux
from .version import ROOT, project_version

log = logging.getLogger(__name__)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build_bundle(dist: Path, work: Path, strip: bool = True, python: str = sys.executable) -> Path:
    """Run PyInstaller; returns the onedir folder (``dist/ember``)."""
    env = dict(os.environ, EMBER_STRIP="1" if strip else "0")
    cmd = [python, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
           "--distpath", str(dist), "--workpath", str(work), str(ROOT / "installers" / "ember.spec")]
    log.info("running %s", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return dist / "ember"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m installers.build", description=__doc__)
    p.add_argument("steps", nargs="*", default=["all"],
                   choices=["bundle", "deb", "tarball", "appimage", "all"])
    p.add_argument("--dist", type=Path, default=ROOT / "dist")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    p.add_argument("--no-strip", action="store_true", help="keep debug symbols (bigger)")
    p.add_argument("--resources", type=Path, default=ROOT / "resources",
                   help="folder with ember.desktop and icons/ (default: resources/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    steps = {"bundle", "deb", "tarball", "appimage"} if "all" in args.steps else set(args.steps)
    version = project_version()
    bundle = args.dist / "ember"
    if "bundle" in steps:
        t0 = time.monotonic()
        bundle = build_bundle(args.dist, args.work, strip=not args.no_strip)
        print(f"bundle: {bundle} ({dir_size(bundle) / 1e6:.0f} MB) in {time.monotonic() - t0:.0f} s")
    if not (bundle / "ember").exists():
        print(f"no bundle at {bundle}: build it first (python -m installers.build bundle)", file=sys.stderr)
        return 1
    if sys.platform.startswith("linux"):
        arch = platform.machine()
        if "tarball" in steps:
            out = linux.build_tarball(bundle, args.dist, version, arch)
            print(f"tarball: {out} ({out.stat().st_size / 1e6:.0f} MB)")
        if "deb" in steps:
            out = linux.build_deb(bundle, args.dist, version, args.resources, arch)
            print(f"deb: {out} ({out.stat().st_size / 1e6:.0f} MB)")
        if "appimage" in steps:
            appdir, squashfs, appimage = linux.build_appimage(bundle, args.dist, version, args.resources, arch)
            print(f"AppDir: {appdir}; squashfs: {squashfs} ({squashfs.stat().st_size / 1e6:.0f} MB)")
            if appimage:
                print(f"AppImage: {appimage} ({appimage.stat().st_size / 1e6:.0f} MB)")
            else:
                print("AppImage: skipped (set APPIMAGE_RUNTIME to the official type-2 runtime file; "
                      "see installers/README.md)")
    elif steps - {"bundle"}:
        print("the .deb, tarball and AppImage are built on Linux; on macOS see installers/macos/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
