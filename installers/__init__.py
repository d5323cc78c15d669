"""Build scripts for Ember's installers (PyInstaller bundle, .deb, tarball, AppImage, macOS .app/.dmg).

Run ``python -m installers.build --help``; ``make package`` calls it.
"""
