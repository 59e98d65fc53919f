"""Files replaced whole or not at all: written to a hidden sibling, fsynced, renamed over their path.

The trainer's one way to write a file others read (a web server, an agent, the README):
`agent.atomicfile` is the agent's, and the trainer reaches the agent only through
`agent.contract`. Whole model directories are `trainer.registry.write_directory_atomically`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_file_atomically(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Replace `path` with `data` (file mode `mode`, whatever the umask) in one rename; returns `path`.

    The bytes go to a hidden temporary sibling, are fsynced, and only then renamed over
    `path`, so a reader (a web server, an agent, the next trainer run) sees the old
    content or the new, never a part; the temporary is removed again when a step fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
