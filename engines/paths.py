"""Where Ember keeps its files, and how it writes them so that they stay the user's own.

Everything lives under platformdirs' per-user folders, or under one folder
when ``EMBER_HOME`` is set (tests and portable installs use that).

What Ember writes for the user (chats, settings, logs, keys, download records)
is private whatever the umask: folders 0700, files 0600 (issue 14). Another
user on the machine must neither read it nor plant anything Ember would trust,
so the single-instance socket lives in a folder whose owner and mode are
checked (:func:`runtime_dir`). A full disk is one error, :class:`NoSpace`, that
names the folder and the space needed.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import platformdirs

from engines import units

log = logging.getLogger(__name__)

APP = "ember"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
#: errno values that mean "no room here": a full disk, or the user's quota reached.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: AF_UNIX socket paths longer than this do not fit in ``sockaddr_un`` (108 bytes with the NUL, less on macOS).
SOCKET_PATH_MAX = 100

_POSIX = os.name == "posix"
_warned: set[str] = set()


# -- errors -----------------------------------------------------------------------------------------

class NoSpace(OSError):
    """A write failed or would fail for lack of space. Fields: folder, needed_bytes (None: unknown),
    free_bytes, what (the thing being written, in words)."""

    def __init__(self, folder: str | os.PathLike, free_bytes: int, needed_bytes: int | None = None,
                 what: str = "Ember's files"):
        self.folder, self.free_bytes, self.needed_bytes, self.what = Path(folder), free_bytes, needed_bytes, what
        super().__init__(errno.ENOSPC, self.message, str(folder))

    @property
    def message(self) -> str:
        need = f"it needs {units.size(self.needed_bytes)}, " if self.needed_bytes else ""
        return (f"There is not enough space on the disk at {self.folder} for {self.what}: {need}"
                f"{units.size(self.free_bytes)} free. Free some space there and try again.")

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        return {"kind": "no_space", "folder": str(self.folder), "free_bytes": self.free_bytes,
                "needed_bytes": self.needed_bytes, "what": self.what, "message": self.message}


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, NoSpace) or (isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS)


def free_bytes(folder: str | os.PathLike) -> int:
    """Free space where ``folder`` is (or would be): the probe every space check uses."""
    probe = Path(folder)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return 0


def no_space(exc: OSError, folder: str | os.PathLike, what: str, needed: int | None = None) -> NoSpace:
    """The :class:`NoSpace` for an ENOSPC/EDQUOT ``exc`` met while writing in ``folder``."""
    if isinstance(exc, NoSpace):
        return exc
    return NoSpace(folder, free_bytes(folder), needed, what)


# -- private folders and files ---------------------------------------------------------------------

@dataclass(frozen=True)
class UnsafeFolder:
    """Why a folder may not hold Ember's socket: a link, not a folder, someone else's, or writable by others."""

    path: Path
    problem: str            # link | not_folder | foreign | loose | unusable
    owner: int | None = None
    mode: int | None = None
    detail: str = ""

    def sentence(self) -> str:
        what = {"link": "is a symbolic link",
                "not_folder": "is not a folder",
                "foreign": f"belongs to another user (uid {self.owner})",
                "loose": f"can be written by other users (mode {self.mode:o})" if self.mode is not None else "",
                "unusable": f"cannot be used ({self.detail})"}[self.problem]
        return f"{self.path} {what}"


def _tighten(path: Path, st: os.stat_result, mode: int) -> None:
    """Take group and other permissions off a file or folder of ours."""
    if _POSIX and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077 | (mode & 0o700))
        log.info("made %s private (it was mode %o)", path, stat.S_IMODE(st.st_mode))


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700 whatever the umask; tighten it if it is ours and looser."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR)
        except FileExistsError:
            continue
        if _POSIX:
            os.chmod(d, PRIVATE_DIR)  # mkdir's mode passes through the umask (an odd one may take the owner's bits)
    if not missing and _POSIX:
        try:
            _tighten(path, path.stat(), PRIVATE_DIR)
        except OSError as exc:
            log.info("cannot make %s private: %s", path, exc)
    return path


def open_private(path: str | os.PathLike, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """A file descriptor on ``path`` created 0600 (an existing file of ours is tightened to 0600)."""
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    if _POSIX:
        try:
            _tighten(Path(path), os.fstat(fd), PRIVATE_FILE)
        except OSError:
            pass
    return fd


def make_private_file(path: str | os.PathLike) -> Path:
    """Create ``path`` empty as 0600 if missing (before a library opens it with its own mode), or tighten it."""
    os.close(open_private(path, os.O_WRONLY | os.O_CREAT))
    return Path(path)


def _home() -> Path | None:
    value = os.environ.get("EMBER_HOME")
    return Path(value).expanduser() if value else None


def _ensure(path: Path) -> Path:
    """``path`` made private; when it cannot be created (a full or read-only disk) it is returned anyway:
    readers then find nothing and writers say why, so Ember still starts."""
    try:
        return private_dir(path)
    except OSError as exc:
        if f"create:{path}" not in _warned:
            _warned.add(f"create:{path}")
            log.warning("cannot create %s: %s", path, exc.strerror or exc)
        return path


def data_dir() -> Path:
    home = _home()
    return _ensure(home / "data" if home else platformdirs.user_data_path(APP, appauthor=False))


def config_dir() -> Path:
    home = _home()
    return _ensure(home / "config" if home else platformdirs.user_config_path(APP, appauthor=False))


def log_dir() -> Path:
    home = _home()
    return _ensure(home / "logs" if home else platformdirs.user_log_path(APP, appauthor=False))


def models_dir() -> Path:
    return _ensure(data_dir() / "models")


# -- the runtime folder (the single-instance socket) ---------------------------------------------------

def check_private_folder(path: Path) -> UnsafeFolder | None:
    """None when ``path`` is a real folder of this user that nobody else can write in; else why not.

    A folder of ours that others may only read (an older Ember made them 0755) is tightened: nobody
    else could have put anything in it."""
    if not _POSIX:
        return None
    try:
        st = os.lstat(path)
    except OSError as exc:
        return UnsafeFolder(path, "unusable", detail=exc.strerror or str(exc))
    if stat.S_ISLNK(st.st_mode):
        return UnsafeFolder(path, "link", st.st_uid, stat.S_IMODE(st.st_mode))
    if not stat.S_ISDIR(st.st_mode):
        return UnsafeFolder(path, "not_folder", st.st_uid, stat.S_IMODE(st.st_mode))
    if st.st_uid != os.getuid():
        return UnsafeFolder(path, "foreign", st.st_uid, stat.S_IMODE(st.st_mode))
    if stat.S_IMODE(st.st_mode) & 0o022:
        return UnsafeFolder(path, "loose", st.st_uid, stat.S_IMODE(st.st_mode))
    try:
        _tighten(path, st, PRIVATE_DIR)
    except OSError as exc:
        return UnsafeFolder(path, "unusable", st.st_uid, stat.S_IMODE(st.st_mode), exc.strerror or str(exc))
    return None


def _runtime_candidates() -> list[tuple[Path, Path | None]]:
    """(folder, base that must be private too), best first."""
    out: list[tuple[Path, Path | None]] = []
    home = _home()
    if home:
        out.append((home / "run", None))
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_absolute():
        out.append((Path(xdg) / APP, Path(xdg)))
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    out.append((Path(tempfile.gettempdir()) / f"{APP}-{uid}", None))
    out.append((platformdirs.user_cache_path(APP, appauthor=False) / "run", None))
    return out


def _warn_once(unsafe: UnsafeFolder) -> None:
    key = f"{unsafe.path}:{unsafe.problem}"
    if key not in _warned:
        _warned.add(key)
        log.warning("not using %s for Ember's socket: %s; using another private folder", unsafe.path,
                    unsafe.sentence())


def runtime_dirs() -> Iterator[Path]:
    """This user's private runtime folders, best first (made when missing, lazily): ``EMBER_HOME/run``,
    ``$XDG_RUNTIME_DIR/ember``, ``/tmp/ember-UID``, then the user's cache folder. A folder that is a
    link, someone else's or writable by others is skipped with a warning: another user must not be able
    to answer for Ember."""
    for folder, base in _runtime_candidates():
        if base is not None:
            unsafe = check_private_folder(base)
            if unsafe is not None:
                _warn_once(unsafe)
                continue
        try:
            if not os.path.lexists(folder):
                private_dir(folder)
        except OSError as exc:
            log.info("cannot create %s: %s", folder, exc)
            continue
        unsafe = check_private_folder(folder)
        if unsafe is not None:
            _warn_once(unsafe)
            continue
        yield folder


def runtime_dir() -> Path:
    """The best of :func:`runtime_dirs`."""
    for folder in runtime_dirs():
        return folder
    raise OSError(errno.EACCES, "no private folder for Ember's socket: every candidate was refused (see the log)")


def socket_path(stem: str) -> Path:
    """Where the socket ``stem`` lives: in :func:`runtime_dir`, or in a shorter private folder when that
    path would not fit in a socket address. Outside the home's own folder the name carries a digest of
    ``EMBER_HOME``, so two homes never share a socket."""
    home = _home()
    tag = "-" + hashlib.sha1(str(home).encode()).hexdigest()[:12] if home else ""
    last = None
    for d in runtime_dirs():
        own = home is not None and d == home / "run"
        last = d / (f"{stem}.sock" if own or not home else f"{stem}{tag}.sock")
        if len(str(last)) <= SOCKET_PATH_MAX:
            return last
    if last is None:
        raise OSError(errno.EACCES, "no private folder for Ember's socket: every candidate was refused (see the log)")
    return last


# -- writing -------------------------------------------------------------------------------------------

def atomic_write_text(path: Path, text: str, what: str | None = None) -> None:
    """Write-then-rename (0600), so a crash never leaves a half-written settings file.

    A full disk raises :class:`NoSpace` naming the folder (``what``: the thing, in words) and leaves
    nothing behind."""
    path = Path(path)
    try:
        private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            raise no_space(exc, path.parent, what or path.name, len(text.encode())) from exc
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            raise no_space(exc, path.parent, what or path.name, len(text.encode())) from exc
        raise
