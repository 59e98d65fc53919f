"""The control directory: where the CLI and the running daemon meet, guarded by file permissions.

Layout (default ``<state_dir>/control``)::

    control/              2770 agent:<group>   the status file lives here
      status.json         0640                 refreshed atomically by the daemon (`statusfile`)
      requests/           2770 agent:<group>   the CLI drops one JSON request per file
      results/            2770 agent:<group>   the daemon answers each request by its id

Who may shelve is decided by the operating system: only root and the members of
``[agent.control] group`` can create a file in ``requests/`` (the daemon creates
the directories with that group and mode 2770, so files made there inherit the
group). The daemon refuses every request while ``requests/`` is writable by
others, is not a directory or is a symlink, and reads request files without
following symlinks and up to `MAX_REQUEST_BYTES`. Every file is written elsewhere
in the same directory and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from agent.atomicfile import write_atomically
from agent.errors import NotAllowedError

MAX_REQUEST_BYTES: Final = 64 * 1024
DIR_MODE: Final = 0o2770
FILE_MODE: Final = 0o640
STATUS_FILE: Final = "status.json"


class ControlDir:
    """Paths and safe file operations of one control directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests = root / "requests"
        self.results = root / "results"
        self.status = root / STATUS_FILE

    # -- the daemon's side --------------------------------------------------------------------------

    def prepare(self, group: str | None) -> list[str]:
        """Create the directories (mode 2770, group `group`); returns problems to log, never raises."""
        problems: list[str] = []
        gid: int | None = None
        if group is not None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                problems.append(f"no such group {group!r}: only root can shelve")
        for directory in (self.root, self.requests, self.results):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                if gid is not None:
                    os.chown(directory, -1, gid)
                os.chmod(directory, DIR_MODE)
            except OSError as exc:
                problems.append(f"{directory}: {exc.strerror or exc}")
        return problems

    def unsafe(self) -> str | None:
        """Why requests must be refused now (the directory is not guarded), or None."""
        try:
            info = os.lstat(self.requests)
        except OSError as exc:
            return f"{self.requests}: {exc.strerror or exc}"
        if not stat.S_ISDIR(info.st_mode):
            return f"{self.requests} is not a directory"
        if info.st_mode & stat.S_IWOTH:
            return f"{self.requests} is writable by every user (mode {stat.S_IMODE(info.st_mode):o})"
        return None

    def pending(self) -> list[Path]:
        """Request files waiting, oldest first (names start with a time stamp)."""
        try:
            names = sorted(os.listdir(self.requests))
        except OSError:
            return []
        return [self.requests / n for n in names if n.endswith(".json") and not n.startswith(".")]

    @staticmethod
    def read_request(path: Path) -> tuple[bytes, int]:
        """A request file's bytes and owner uid, without following symlinks; raises OSError or ValueError."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            if info.st_size > MAX_REQUEST_BYTES:
                raise ValueError(f"larger than {MAX_REQUEST_BYTES} bytes")
            return os.read(fd, MAX_REQUEST_BYTES + 1), info.st_uid
        finally:
            os.close(fd)

    # -- both sides ---------------------------------------------------------------------------------

    def result_path(self, request_id: str) -> Path:
        """Where the daemon answers the request with this id."""
        return self.results / f"{request_id}.json"

    def group_name(self) -> str:
        """The group that owns the control directory (for messages)."""
        try:
            gid = os.stat(self.root).st_gid
        except OSError:
            return "?"
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)

    def submit(self, request_id: str, body: bytes) -> Path:
        """Drop a request file atomically; raises `NotAllowedError` when the user may not."""
        try:
            if not stat.S_ISDIR(os.stat(self.requests).st_mode):
                raise NotAllowedError(f"{self.requests} is not a directory")
            return write_atomic(self.requests / f"{request_id}.json", body)
        except FileNotFoundError as exc:
            raise NotAllowedError(
                f"{self.requests} does not exist: the agent creates it when it starts"
            ) from exc
        except PermissionError as exc:
            raise NotAllowedError(
                f"not allowed to write {self.requests}: only root and members of group "
                f"{self.group_name()!r} may shelve ({exc.strerror})"
            ) from exc


def write_atomic(path: Path, body: bytes, mode: int = FILE_MODE) -> Path:
    """Replace `path` with `body` through a hidden file beside it (see `agent.atomicfile`)."""
    return write_atomically(path, body, mode, sync_directory=False)


@contextlib.contextmanager
def removing(path: Path) -> Iterator[Path]:
    """Yield `path`; delete it afterwards whatever happened (a request is handled once)."""
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
