"""The .deb (installed into a throwaway root with dpkg), the portable tarball and the AppImage parts."""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from installers import linux
from installers.version import debian_version
from tests.packaging.conftest import BUILD_TIMEOUT, run_frozen

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT)]


def _control(deb: Path) -> dict:
    text = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    fields, key = {}, None
    for line in text.splitlines():
        if line.startswith(" ") and key:
            fields[key] += "\n" + line
        else:
            key, _, value = line.partition(": ")
            fields[key] = value
    return fields


@pytest.fixture(scope="module")
def installed(deb, tmp_path_factory):
    """The .deb installed by dpkg into an empty root whose package database lists this
    machine's packages, so dpkg checks the Depends against real Debian package names."""
    root = tmp_path_factory.mktemp("dpkg-root")
    admin = root / "var" / "lib" / "dpkg"
    for sub in ("updates", "info", "triggers"):
        (admin / sub).mkdir(parents=True)
    shutil.copy("/var/lib/dpkg/status", admin / "status")
    (root / "var" / "log").mkdir(parents=True)
    r = subprocess.run(["dpkg", f"--root={root}", "--force-not-root", "--force-script-chrootless",
                        "--no-triggers", "-i", str(deb)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return root


def test_deb_name_and_control_carry_the_version(deb, version):
    assert deb.name == f"ember_{debian_version(version)}_amd64.deb"
    c = _control(deb)
    assert c["Package"] == "ember" and c["Version"] == debian_version(version)
    assert c["Architecture"] == "amd64"
    depends = c["Depends"]
    for lib in ("libxcb-cursor0", "libegl1", "libxkbcommon-x11-0", "libfontconfig1", "libdbus-1-3", "libgl1"):
        assert lib in depends
    assert int(c["Installed-Size"]) > 50_000  # KiB


def test_deb_has_no_maintainer_scripts(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "ctl")], check=True)
    # no preinst/postinst/prerm/postrm: dpkg triggers refresh the icon cache and desktop database
    assert sorted(p.name for p in (tmp_path / "ctl").iterdir()) == ["control", "md5sums"]


def test_installed_files_verify_against_their_checksums(installed):
    r = subprocess.run(["dpkg", f"--root={installed}", "--verify", "ember"], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_installed_files(installed, version):
    assert (installed / "opt/ember/ember").is_file() and os.access(installed / "opt/ember/ember", os.X_OK)
    link = installed / "usr/bin/ember"
    assert link.is_symlink() and os.readlink(link) == "/opt/ember/ember"
    assert (installed / "opt/ember/_internal/engines/VERSION").read_text().strip() == version
    status = subprocess.run(["dpkg", f"--root={installed}", "-s", "ember"], capture_output=True, text=True)
    assert "Status: install ok installed" in status.stdout


def test_installed_binary_runs_through_a_symlink_like_usr_bin(installed, user_home, tmp_path, version):
    """/usr/bin/ember is a symlink: the bootloader must still find /opt/ember/_internal."""
    link = tmp_path / "bin" / "ember"
    link.parent.mkdir()
    link.symlink_to(installed / "opt/ember/ember")
    r = run_frozen(link, "--version", home=user_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ember {version}"


def test_desktop_entry_validates_and_starts_ember(installed):
    entry = installed / "usr/share/applications/ember.desktop"
    r = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr
    text = entry.read_text()
    assert "\nExec=ember" in text and "\nIcon=ember\n" in text and "\nTerminal=false" in text


def test_icons_at_their_sizes(installed):
    hicolor = installed / "usr/share/icons/hicolor"
    pngs = sorted(hicolor.glob("*/apps/ember.png"))
    sizes = set()
    for png in pngs:
        folder = png.parent.parent.name
        w, h = linux.png_size(png)
        assert folder == f"{w}x{h}", f"{png} is {w}x{h}"
        sizes.add(w)
    assert {16, 22, 24, 32, 48, 64, 128, 256} <= sizes
    svg = hicolor / "scalable/apps/ember.svg"
    assert svg.read_text().lstrip().startswith(("<svg", "<?xml"))


def test_no_autostart_is_installed(installed, deb):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "autostart" not in listing
    assert not (installed / "etc/xdg/autostart").exists()


def test_deb_removes_cleanly(installed):
    r = subprocess.run(["dpkg", f"--root={installed}", "--force-not-root", "--force-script-chrootless",
                        "--no-triggers", "--purge", "ember"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    left = [p for p in (installed / "opt").rglob("*")] + [p for p in (installed / "usr").rglob("*")
                                                            if p.is_file() or p.is_symlink()]
    assert not left, left[:10]
    status = subprocess.run(["dpkg", f"--root={installed}", "-s", "ember"], capture_output=True, text=True)
    assert status.returncode != 0


def test_tarball_runs_from_where_it_is_unpacked(tarball, version, tmp_path, user_home):
    assert tarball.name == f"ember-{version}-linux-x86_64.tar.gz"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        assert all(n == f"ember-{version}" or n.startswith(f"ember-{version}/") for n in names)
        assert {m.uid for m in tar.getmembers()} == {0}
        tar.extractall(tmp_path / "unpacked")
    r = run_frozen(tmp_path / "unpacked" / f"ember-{version}" / "ember", "--version", home=user_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ember {version}"


def test_appimage_filesystem_runs(appimage_parts, tmp_path, user_home, version):
    """The squashfs the AppImage runtime mounts: AppRun, desktop entry and icon at its root."""
    _, squashfs = appimage_parts
    listing = subprocess.run(["unsquashfs", "-l", str(squashfs)], capture_output=True, text=True,
                             check=True).stdout.split()
    for needed in ("squashfs-root/AppRun", "squashfs-root/ember.desktop", "squashfs-root/ember.png",
                   "squashfs-root/.DirIcon", "squashfs-root/usr/lib/ember/ember"):
        assert needed in listing
    out = tmp_path / "appdir"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(out), str(squashfs)], check=True,
                   stdout=subprocess.DEVNULL)
    r = subprocess.run(["desktop-file-validate", str(out / "ember.desktop")], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout
    assert f"X-AppImage-Version={version}" in (out / "ember.desktop").read_text()
    assert linux.png_size(out / "ember.png") == (256, 256)
    r = run_frozen(out / "AppRun", "--version", home=user_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ember {version}"


def test_appimage_is_runtime_then_filesystem(bundle, appimage_parts, tmp_path, version):
    """With a runtime given (FAKE here: a copy of /bin/true stands in for the downloaded
    type-2 runtime), the image is runtime + squashfs, and the filesystem reads at the
    runtime's length, which is where the real runtime looks for it."""
    _, squashfs = appimage_parts
    fake_runtime = tmp_path / "fake-runtime"
    shutil.copy("/bin/true", fake_runtime)
    out = tmp_path / "out"
    out.mkdir()
    image = linux.assemble_appimage(fake_runtime, squashfs, out / f"Ember-{version}-x86_64.AppImage")
    assert os.access(image, os.X_OK)
    offset = fake_runtime.stat().st_size
    listing = subprocess.run(["unsquashfs", "-o", str(offset), "-l", str(image)], capture_output=True,
                             text=True, check=True).stdout
    assert "squashfs-root/AppRun" in listing
