"""Ember's own log file: readable by this user only, and quiet when the disk is full.

The app log holds model names, paths and errors (and, at debug level, more):
it is created 0600 whatever the umask. Python's ``logging`` prints a traceback
to stderr for every record it fails to write; on a full disk that is a
traceback per line, so this handler says it once and stops writing instead.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from engines import paths

log = logging.getLogger(__name__)


class PrivateFileHandler(logging.FileHandler):
    """A ``FileHandler`` whose file is 0600 and that turns itself off when the disk fills."""

    def __init__(self, path: str | os.PathLike, encoding: str = "utf-8"):
        self.failed = False
        super().__init__(path, mode="a", encoding=encoding, delay=False)

    def _open(self):
        fd = paths.open_private(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's API
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            self.failed = True
            why = paths.no_space(exc, Path(self.baseFilename).parent, "the log").message \
                if paths.is_no_space(exc) else f"{exc.strerror or exc}"
            print(f"ember: the log file {self.baseFilename} cannot be written, so logging to it stopped: {why}",
                  file=sys.stderr)
            return
        super().handleError(record)


def file_handler(path: str | os.PathLike) -> PrivateFileHandler | None:
    """The handler for ``path``, or None when the file cannot even be opened (the app runs without it)."""
    try:
        return PrivateFileHandler(path)
    except OSError as exc:
        print(f"ember: cannot open the log file {path}: {exc.strerror or exc}", file=sys.stderr)
        return None
