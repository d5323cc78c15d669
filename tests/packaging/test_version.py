"""One version, in pyproject.toml: what the checkout, the CLI and the package names report."""
from __future__ import annotations

import subprocess
import sys

from installers import linux
from installers.version import debian_version, project_version
from tests.conftest import ROOT


def test_checkout_fallback_reads_pyproject():
    from engines import version
    assert version.VERSION == project_version()


def test_cli_version_is_the_pyproject_version():
    r = subprocess.run([sys.executable, "-m", "engines.cli", "--version"], capture_output=True, text=True,
                       cwd=ROOT, check=True)
    assert r.stdout.strip() == f"ember {project_version()}"


def test_artefact_names_carry_the_version():
    assert linux.deb_name("1.2.3", "x86_64") == "ember_1.2.3_amd64.deb"
    assert linux.tarball_name("1.2.3", "x86_64") == "ember-1.2.3-linux-x86_64.tar.gz"
    # a pre-release sorts before its release in dpkg only with a tilde
    assert debian_version("1.0rc1") == "1.0~rc1" and debian_version("2.0.dev3") == "2.0~.dev3"
    r = subprocess.run(["dpkg", "--compare-versions", debian_version("1.0rc1"), "lt", "1.0"])
    assert r.returncode == 0
