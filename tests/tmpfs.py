"""A real, small tmpfs for disk-full tests (tests run as root): mounted in a fixture, unmounted after.

`SmallDisk.fill` writes a filler file until the file system says ENOSPC; `free` deletes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

FILLER = ".filler"


class SmallDisk:
    """A mounted tmpfs of a few MiB."""

    def __init__(self, mountpoint: Path) -> None:
        self.path = mountpoint

    def fill(self) -> None:
        """Use up every free byte (a filler file written until ENOSPC)."""
        chunk = b"\0" * (64 * 1024)
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = len(chunk)
            while size:
                try:
                    os.write(fd, chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    size //= 2  # the last blocks, down to one byte
        finally:
            os.close(fd)
        assert self.free_bytes() == 0

    def free(self) -> None:
        """Give the space back."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / FILLER).unlink()

    def free_bytes(self) -> int:
        """Bytes free on it now."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def small_disk(mountpoint: Path, size: str = "8m") -> Iterator[SmallDisk]:
    """Mount a tmpfs of `size` on `mountpoint` (created) for the duration of the block."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)], check=True
    )
    try:
        yield SmallDisk(mountpoint)
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)  # still busy: detach it
