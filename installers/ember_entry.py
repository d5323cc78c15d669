"""PyInstaller's entry script: the frozen ``ember`` executable.

The same executable is the desktop app, the CLI and (``ember engine-worker ...``)
the engine child, so a user needs no Python.
"""
import sys

from desktop.launcher import main

if __name__ == "__main__":
    sys.exit(main())
