"""Linux packages from the onedir bundle: the .deb, the portable tarball, the AppImage.

No maintainer scripts in the .deb: Debian's hicolor icon cache and desktop database are
refreshed by dpkg triggers (gtk-update-icon-cache, desktop-file-utils) on the paths we
install into, so there is nothing left for postinst/postrm to do. Nothing is installed
into /etc/xdg/autostart: starting with the session is the user's choice in Settings.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .version import debian_version

log = logging.getLogger(__name__)

APP = "ember"
MAINTAINER = "Ember developers <ember@users.noreply.github.com>"
SUMMARY = "run large language models on this computer (tray app)"
DESCRIPTION = """\
 Ember is a tray app that runs local language models with llama.cpp,
 tells the truth about what fits in memory, and explains failures with
 one-click fixes. Optional engines (Transformers, vLLM, SGLang, MLX) are
 used from an environment you choose."""

#: System libraries the bundle links to but does not carry: Qt's xcb platform (the Makefile's
#: APT_RUN), and Wayland's client libraries for Qt's wayland platform.
#: tests/packaging checks every NEEDED library is bundled or owned by one of these.
QT_RUNTIME_DEPENDS = [
    "libxcb1", "libxcb-cursor0", "libegl1", "libxkbcommon-x11-0", "libxcb-icccm4", "libxcb-keysyms1",
    "libxcb-shape0", "libxcb-render-util0", "libxcb-image0", "libgl1", "libfontconfig1", "libdbus-1-3",
    "libwayland-client0", "libwayland-cursor0", "libwayland-egl1",
]
RECOMMENDS = ["fonts-dejavu-core | fonts-liberation2"]
#: GNOME shows tray icons only with this extension.
SUGGESTS = ["gnome-shell-extension-appindicator"]

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class Icon:
    path: Path
    size: int | None  # pixels (square PNG); None for the scalable SVG


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    return struct.unpack(">II", head[16:24])


def find_icons(resources: Path) -> list[Icon]:
    """The app icon in every size found in resources/icons (PNG sizes read from the files)."""
    folder = resources / "icons"
    icons: dict[int | None, Icon] = {}
    for png in sorted(folder.glob("*.png")) + sorted(folder.glob("*/*.png")):
        if not _is_app_icon(png):
            continue
        w, h = png_size(png)
        if w == h and w not in icons:
            icons[w] = Icon(png, w)
    svgs = [p for p in sorted(folder.glob("*.svg")) if _is_app_icon(p)]
    if svgs:
        preferred = [p for p in svgs if p.stem == APP]
        icons[None] = Icon((preferred or svgs)[0], None)
    if not icons:
        raise FileNotFoundError(f"no app icon (PNG or SVG) in {folder}")
    return sorted(icons.values(), key=lambda i: i.size or 1 << 20)


def _is_app_icon(path: Path) -> bool:
    """Tray state icons (ember-loading.png...) are not the app icon."""
    stem = path.stem.lower()
    return stem.startswith(APP) and not any(w in stem for w in ("tray", "loading", "error", "busy", "idle",
                                                                  "running", "mono", "symbolic"))


def desktop_entry(resources: Path) -> Path:
    path = resources / f"{APP}.desktop"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the desktop entry comes from resources/")
    return path


def glibc_needed(bundle: Path) -> str | None:
    """The newest GLIBC_2.N symbol version any bundled ELF file asks for."""
    newest = None
    for f in bundle.rglob("*"):
        if not f.is_file() or f.is_symlink():
            continue
        with open(f, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
            data = fh.read()
        for m in re.finditer(rb"GLIBC_2\.(\d+)(?:\.(\d+))?", data):
            v = (2, int(m.group(1)), int(m.group(2) or 0))
            newest = v if newest is None or v > newest else newest
    if newest is None:
        return None
    return ".".join(str(x) for x in (newest if newest[2] else newest[:2]))


def _copytree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


def _install_desktop_and_icons(resources: Path, usr_share: Path) -> None:
    apps = usr_share / "applications"
    apps.mkdir(parents=True, exist_ok=True)
    shutil.copy2(desktop_entry(resources), apps / f"{APP}.desktop")
    for icon in find_icons(resources):
        sub = "scalable" if icon.size is None else f"{icon.size}x{icon.size}"
        dest = usr_share / "icons" / "hicolor" / sub / "apps" / f"{APP}{icon.path.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(icon.path, dest)


def _fix_modes(root: Path) -> None:
    """0755 folders and executables, 0644 other files: what dpkg and lintian expect."""
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        if p.is_dir():
            p.chmod(0o755)
        else:
            p.chmod(0o755 if os.access(p, os.X_OK) else 0o644)


def control_text(version: str, arch: str, installed_kib: int, glibc: str | None) -> str:
    depends = ([f"libc6 (>= {glibc})"] if glibc else []) + QT_RUNTIME_DEPENDS
    return (f"Package: {APP}\n"
            f"Version: {debian_version(version)}\n"
            f"Architecture: {DEB_ARCH.get(arch, arch)}\n"
            f"Maintainer: {MAINTAINER}\n"
            f"Installed-Size: {installed_kib}\n"
            f"Depends: {', '.join(depends)}\n"
            f"Recommends: {', '.join(RECOMMENDS)}\n"
            f"Suggests: {', '.join(SUGGESTS)}\n"
            "Section: utils\n"
            "Priority: optional\n"
            "Homepage: https://github.com/ember-app/ember\n"
            f"Description: {SUMMARY}\n{DESCRIPTION}\n")


def _md5sums(root: Path) -> str:
    import hashlib

    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.relative_to(root).parts[0] != "DEBIAN":
            h = hashlib.md5()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            lines.append(f"{h.hexdigest()}  {p.relative_to(root).as_posix()}\n")
    return "".join(lines)


def deb_name(version: str, arch: str) -> str:
    return f"{APP}_{debian_version(version)}_{DEB_ARCH.get(arch, arch)}.deb"


def build_deb(bundle: Path, out_dir: Path, version: str, resources: Path, arch: str = "x86_64",
              xz_level: int = 6) -> Path:
    """The .deb: /opt/ember (the bundle), /usr/bin/ember, desktop entry, hicolor icons."""
    root = out_dir / f"deb-root-{version}"
    shutil.rmtree(root, ignore_errors=True)
    _copytree(bundle, root / "opt" / APP)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / APP).symlink_to(f"/opt/{APP}/{APP}")
    _install_desktop_and_icons(resources, root / "usr" / "share")
    doc = root / "usr" / "share" / "doc" / APP
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Ember: Apache-2.0. The bundled Python runtime, Qt (LGPL-3.0) and llama.cpp (MIT)\n"
        "keep their own licenses; see /opt/ember/_internal for their files.\n", encoding="utf-8")
    _fix_modes(root)
    kib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) // 1024 + 1
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "md5sums").write_text(_md5sums(root), encoding="utf-8")  # for `dpkg --verify`
    (root / "DEBIAN" / "control").write_text(control_text(version, arch, kib, glibc_needed(bundle)),
                                             encoding="utf-8")
    _fix_modes(root / "DEBIAN")
    out = out_dir / deb_name(version, arch)
    out.unlink(missing_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", f"-z{xz_level}", "--build", str(root), str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(root)
    return out


def tarball_name(version: str, arch: str) -> str:
    return f"{APP}-{version}-linux-{arch}.tar.gz"


def build_tarball(bundle: Path, out_dir: Path, version: str, arch: str = "x86_64") -> Path:
    """The portable tarball: ``ember-VERSION/ember`` runs from wherever it is unpacked."""
    out = out_dir / tarball_name(version, arch)
    top = f"{APP}-{version}"

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(out, "w:gz", compresslevel=6) as tar:
        tar.add(bundle, arcname=top, filter=owned_by_root)
    return out


APPRUN = """#!/bin/sh
# AppImage entry: run the bundled Ember from wherever the image is mounted.
HERE="$(dirname "$(readlink -f "$0")")"
exec "$HERE/usr/lib/ember/ember" "$@"
"""


def build_appdir(bundle: Path, out_dir: Path, version: str, resources: Path, arch: str = "x86_64") -> Path:
    appdir = out_dir / f"Ember-{version}-{arch}.AppDir"
    shutil.rmtree(appdir, ignore_errors=True)
    _copytree(bundle, appdir / "usr" / "lib" / APP)
    (appdir / "usr" / "bin").mkdir(parents=True)
    (appdir / "usr" / "bin" / APP).symlink_to(f"../lib/{APP}/{APP}")
    _install_desktop_and_icons(resources, appdir / "usr" / "share")
    entry = desktop_entry(resources).read_text(encoding="utf-8")
    if "X-AppImage-Version" not in entry:
        entry = entry.replace("[Desktop Entry]\n", f"[Desktop Entry]\nX-AppImage-Version={version}\n", 1)
    (appdir / f"{APP}.desktop").write_text(entry, encoding="utf-8")
    icons = find_icons(resources)
    pngs = [i for i in icons if i.size]
    best = next((i for i in pngs if i.size == 256), pngs[-1] if pngs else icons[-1])
    shutil.copy2(best.path, appdir / f"{APP}{best.path.suffix}")
    (appdir / ".DirIcon").symlink_to(f"{APP}{best.path.suffix}")
    (appdir / "AppRun").write_text(APPRUN, encoding="utf-8")
    (appdir / "AppRun").chmod(0o755)
    _fix_modes(appdir)
    return appdir


def build_appimage(bundle: Path, out_dir: Path, version: str, resources: Path,
                   arch: str = "x86_64", runtime: Path | None = None) -> tuple[Path, Path, Path | None]:
    """AppDir -> squashfs (mksquashfs) -> runtime + squashfs = AppImage.

    The last step needs the official type-2 runtime (AppImage/type2-runtime releases), which
    this build machine cannot download: give its path in APPIMAGE_RUNTIME (CI fetches it).
    Returns (AppDir, squashfs, AppImage or None).
    """
    appdir = build_appdir(bundle, out_dir, version, resources, arch)
    squashfs = out_dir / f"Ember-{version}-{arch}.squashfs"
    squashfs.unlink(missing_ok=True)
    subprocess.run(["mksquashfs", str(appdir), str(squashfs), "-root-owned", "-noappend", "-comp", "zstd",
                    "-quiet", "-no-progress"], check=True, stdout=subprocess.DEVNULL)
    runtime = runtime or (Path(os.environ["APPIMAGE_RUNTIME"]) if os.environ.get("APPIMAGE_RUNTIME") else None)
    if runtime is None:
        return appdir, squashfs, None
    image = assemble_appimage(runtime, squashfs, out_dir / f"Ember-{version}-{arch}.AppImage")
    return appdir, squashfs, image


def assemble_appimage(runtime: Path, squashfs: Path, image: Path) -> Path:
    """A type-2 AppImage is the runtime ELF followed by the squashfs it mounts."""
    with open(image, "wb") as out:
        for part in (runtime, squashfs):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    image.chmod(0o755)
    return image
