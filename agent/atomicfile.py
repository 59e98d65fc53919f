"""Files replaced whole or not at all: written beside their path, fsynced, renamed over it.

A reader (node_exporter, the technician CLI, the next start of the agent) sees the old
content or the new, never a part. The temporary file is hidden (``.<name>.<pid>.tmp``,
so no glob for the real name matches it) and removed again when the write fails.
Failures raise `OSError`; what a failure means is the caller's to say.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int, *, sync_directory: bool = True) -> Path:
    """Replace `path` with `data` (file mode `mode`, whatever the umask); returns `path`.

    With `sync_directory` the rename itself is made durable too (an fsync of the directory).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)  # the unit's UMask=0077 would hide it from the group
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_directory:
        fsync_directory(path.parent)
    return path


def fsync_directory(directory: Path) -> None:
    """Make the renames and creations in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
