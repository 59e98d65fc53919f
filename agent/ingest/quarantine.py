r"""The quarantine file: every refused sensor line, with why and where, as JSON lines.

One JSON object per line::

    {"time": 1764197000.1, "stream": "arm1", "file": "/var/log/robot/arm1.csv",
     "offset": 1234, "length": 17, "reason": "not_numeric", "detail": "A1_I='abc'",
     "raw": "1764197000.0,abc,..."}

``raw`` holds the first bytes of the line, decoded as UTF-8 with undecodable
bytes escaped (``\xNN``). The file itself is ASCII (JSON escapes), so no character
of a refused line can split a record for a line-based reader. The file is bounded
by ``max_bytes``: when a write would pass it, the file is moved to ``<name>.1``
(replacing an older one) and a new one is started, so at most twice the bound is
kept. Counters by reason survive rotation; lines that could not be written are
counted under ``write_failed``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.contract.records import RejectedLine
from agent.ownfiles import move_aside, open_own

RAW_LIMIT = 256
"""At most this many bytes of a refused line are kept."""


class Quarantine:
    """Appends refused lines to a bounded JSON-lines file and counts them by reason."""

    def __init__(self, path: Path, max_bytes: int, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        """Refused lines by reason, since this object was made."""
        self.write_failed = 0
        """Lines counted but not written (disk full, permissions)."""

    def write(self, stream: str, source: Path | str, rejected: Sequence[RejectedLine]) -> None:
        """Record refused lines of one file of one stream. Never raises for I/O problems."""
        if not rejected:
            return
        now = self._clock()
        lines = []
        for item in rejected:
            self.counts[item.reason] += 1
            record = {
                "time": now,
                "stream": stream,
                "file": str(source),
                "offset": item.offset,
                "length": item.length,
                "reason": item.reason,
                "detail": item.detail,
                "raw": item.raw[:RAW_LIMIT].decode("utf-8", "backslashreplace"),
            }
            # ASCII only: U+0085, U+2028 … in a raw line would split the record for str.splitlines()
            lines.append(json.dumps(record, separators=(",", ":")) + "\n")
        payload = "".join(lines).encode("ascii")
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    size = self.path.stat().st_size
                except FileNotFoundError:
                    size = 0
                if size and size + len(payload) > self.max_bytes:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                move_aside(self.path)  # a FIFO there would block the write: a regular file instead
                fd = open_own(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                with os.fdopen(fd, "ab") as handle:
                    handle.write(payload)
            except OSError:
                self.write_failed += len(rejected)

    def total(self) -> int:
        """All refused lines counted so far."""
        return sum(self.counts.values())
