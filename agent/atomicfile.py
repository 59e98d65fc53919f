"""Files replaced whole or not at all: written beside their path, fsynced, renamed over it.

A reader (node_exporter, the technician CLI, the next start of the agent) sees the old
content or the new, never a part. The temporary file is hidden (``.<name>.<random>.tmp``,
so no glob for the real name matches it), made anew for each write (``O_EXCL``: two
threads writing one path never share it, and nothing planted under its name is opened),
and removed again when the write fails. Failures raise `OSError`; what a failure means
is the caller's to say.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int, *, sync_directory: bool = True) -> Path:
    """Replace `path` with `data` (file mode `mode`, whatever the umask); returns `path`.

    With `sync_directory` the rename itself is made durable too (an fsync of the directory).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
