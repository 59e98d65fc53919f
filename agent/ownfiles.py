"""The agent's own files (state directory, model store) opened so that no planted node can block it.

A FIFO opened for reading without ``O_NONBLOCK`` waits for a writer, forever; one opened
for writing waits for a reader; a read of ``/dev/zero`` never ends. The agent opens its
own files through `open_own`: ``O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC``, then ``fstat``,
and anything but a regular file (a FIFO, a device, a socket, a directory, a symlink) is
refused with `NotRegularFileError` before a byte is read or written. Regular files are
opened exactly as before (``O_NONBLOCK`` means nothing to them).

Callers degrade as they do for an unreadable file: `read_own` treats a refused file as
absent, and `move_aside` renames a refused node out of the way (to
``<name>.refused-<UTC time>``) where the agent writes the file, so a regular one can be
made in its place. Both log ``own_file_refused`` with the path and what was found.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger("robotpm.agent")

REFUSED_INFIX: Final = ".refused-"
_SAFE_FLAGS: Final = os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


class NotRegularFileError(OSError):
    """The agent's own file is not a regular file (``kind`` says what it is: "fifo", "symlink", …)."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"not a regular file but a {kind}", str(path))
        self.path = path
        self.kind = kind


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` `mode` is, in a word."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "unknown node"


def not_regular(path: Path) -> str | None:
    """What `path` is when it exists and is not a regular file (a symlink is not followed), else None."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else kind_of(mode)


def open_own(path: Path | str, flags: int, mode: int = 0o600, *, follow_symlinks: bool = False) -> int:
    """``os.open(path, flags | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, mode)``, for regular files only.

    Raises `NotRegularFileError` (nothing stays open) when `path` is anything else, and
    `OSError` as `os.open` does otherwise. With `follow_symlinks` a symlink to a regular
    file is opened (a log file the follower would read too), without ``O_NOFOLLOW``.
    """
    path = Path(path)
    safe = _SAFE_FLAGS & ~os.O_NOFOLLOW if follow_symlinks else _SAFE_FLAGS
    try:
        fd = os.open(path, flags | safe, mode)
    except OSError as exc:
        # ELOOP: a symlink (O_NOFOLLOW); ENXIO: a FIFO without a reader opened to write;
        # EISDIR: a directory opened to write; ENODEV, EOPNOTSUPP: a socket, a device without driver
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
            kind = not_regular(path)
            if kind is not None:
                raise NotRegularFileError(path, kind) from exc
        raise
    try:
        st_mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st_mode):
        os.close(fd)
        raise NotRegularFileError(path, kind_of(st_mode))
    return fd


def read_own(path: Path, max_bytes: int = 1 << 24, *, report: bool = True) -> bytes:
    """At most `max_bytes` of the regular file `path`.

    Raises `FileNotFoundError` when it is missing, `NotRegularFileError` (logged as
    ``own_file_refused`` when `report`: the daemon's readers, not the CLI's) when it is not a
    regular file, `OSError` else.
    """
    try:
        fd = open_own(path, os.O_RDONLY)
    except NotRegularFileError as exc:
        if report:
            log.error("own_file_refused", path=str(path), found=exc.kind, action="treated as absent")
        raise
    try:
        chunks: list[bytes] = []
        left = max_bytes
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def move_aside(path: Path, wall: float | None = None) -> Path | None:
    """Rename `path` to ``<name>.refused-<UTC time>`` if it exists and is not a regular file.

    Returns where it went (None when there was nothing to move), logged as
    ``own_file_refused``. A node that cannot be renamed is unlinked; a directory that can
    be neither raises `OSError`.
    """
    kind = not_regular(path)
    if kind is None:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if wall is None else wall))
    target = path.with_name(f"{path.name}{REFUSED_INFIX}{stamp}")
    n = 1
    while os.path.lexists(target):
        n += 1
        target = path.with_name(f"{path.name}{REFUSED_INFIX}{stamp}-{n}")
    try:
        os.rename(path, target)
    except OSError:
        if kind == "directory":
            raise
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.error("own_file_refused", path=str(path), found=kind, action="unlinked")
        return None
    log.error("own_file_refused", path=str(path), found=kind, action="moved aside", moved_to=str(target))
    return target
