"""The ``ember`` executable: the desktop app with no arguments, the CLI otherwise.

Lives in desktop/ so that the core (engines/) never imports the Qt face; it
imports nothing heavy itself, because the engine child (``ember engine-worker``)
starts through here too.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] == "gui" or (argv[0].startswith("-") and argv[0] not in CLI_FLAGS):
        try:
            from desktop import app
        except ImportError as exc:  # PySide6 or its system libraries missing
            print(f"ember: the desktop app cannot start ({exc}); `ember --help` lists the commands",
                  file=sys.stderr)
            return 1
        return app.main(argv[1:] if argv[:1] == ["gui"] else argv)
    from engines import cli
    return cli.main(argv)


#: options that belong to the CLI, not to Qt (Qt takes e.g. -platform, -style)
CLI_FLAGS = {"-h", "--help", "--version", "-v", "--verbose"}

if __name__ == "__main__":
    sys.exit(main())
