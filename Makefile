# Ember: the README's two commands, and the rest.
#   make run    - set up .venv with Ember and the starter model, start the tray app
#   make test   - install the test extras and system packages, run the whole suite
#   make bench  - speed ratios against the raw engine
#   make package - the PyInstaller bundle and Linux packages
#   make xinference - the real Xinference cluster the cluster tests start (own venv under .cache)
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Caches live inside the checkout (ignored by git), so CI's fresh clone reuses them within one run.
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export EMBER_TEST_CACHE := $(CURDIR)/.cache/test
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null && { [ "$$(id -u)" = 0 ] || echo sudo; })

# Debian packages: Qt's xcb platform needs these to show windows; the tests add a virtual
# screen (xvfb), a tray host (trayer), window tools and packaging checks.
APT_RUN := libxcb-cursor0 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 \
	libxcb-render-util0 libxcb-image0 libgl1 libfontconfig1 libdbus-1-3 fonts-dejavu-core
APT_TEST := $(APT_RUN) xvfb trayer x11-utils xdotool imagemagick desktop-file-utils binutils squashfs-tools \
	libwayland-client0 libwayland-cursor0 libwayland-egl1

.PHONY: run test bench package sysdeps-run sysdeps-test clean xinference

define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing system packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

sysdeps-run:
	$(call apt_install,$(APT_RUN))

sysdeps-test:
	$(call apt_install,$(APT_TEST))

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[starter,nvidia]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,package]'
	touch $@ $(VENV)/.run-installed

run: sysdeps-run $(VENV)/.run-installed
	$(BIN)/ember

test: sysdeps-test $(VENV)/.test-installed xinference
	$(BIN)/python -m pytest

# A real Xinference (supervisor + worker) for tests/integration/test_cluster.py, in its own venv:
# it brings its own transformers/torch stack. torch is constrained, or pip swaps the CPU build for
# a 6 GB CUDA one (xinference -> timm -> torchvision -> torch 2.14). Reinstalled only when the pins
# change (.installed holds them); made at its real path, since .cache may be a link shared by
# worktrees. An install that cannot happen (no registry) leaves install-failed.txt, and the cluster
# tests skip with its last lines as the reason.
XINF_VENV := .cache/xinference-venv
XINF_PINS := xinference==4.1.0 xllamacpp==2026.10.11549 torch==2.13.0
xinference:
	@venv=$$(realpath -m $(XINF_VENV)); \
	if [ "$$(cat $$venv/.installed 2>/dev/null)" != "$(XINF_PINS)" ]; then \
		echo "Installing Xinference into $(XINF_VENV) (2-7 minutes the first time)"; \
		rm -rf "$$venv" && mkdir -p "$$(dirname $$venv)" && $(PY) -m venv "$$venv" && echo "torch==2.13.0" > "$$venv/constraints.txt"; \
		if "$$venv/bin/pip" install -q $(XINF_PINS) -c "$$venv/constraints.txt" > "$$venv/install.log" 2>&1; then \
			echo -n "$(XINF_PINS)" > "$$venv/.installed"; \
		else \
			grep -v "^WARNING: Location" "$$venv/install.log" | tail -n 20 > "$$venv/install-failed.txt"; \
			echo "Xinference could not be installed; the cluster tests will skip:"; cat "$$venv/install-failed.txt"; \
		fi; \
	fi

bench: sysdeps-test $(VENV)/.test-installed
	$(BIN)/python bench/streaming.py
	$(BIN)/python bench/desktop.py
	$(BIN)/python bench/catalog_fit.py
	$(BIN)/python bench/engines_cpu.py

# The onedir bundle (dist/ember), the .deb, the tarball and the AppImage's squashfs (the AppImage
# itself when APPIMAGE_RUNTIME names the official type-2 runtime; see installers/README.md).
APT_PACKAGE := binutils squashfs-tools
$(VENV)/.package-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[package]'
	touch $@

package: $(VENV)/.package-installed
	$(call apt_install,$(APT_PACKAGE))
	$(BIN)/python -m installers.build all

clean:
	rm -rf build dist .pytest_cache
