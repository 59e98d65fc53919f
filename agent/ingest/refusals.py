"""Paths of a stream that are refused (not a regular file, unreadable …): counted, logged once, reported.

Each scan of the stream's directory says which of the stream's names it could not
follow and why (see `agent.ingest.tracked.refusal_reason`: ``not_regular_file`` for a
FIFO, a device node, a socket or a directory in a log file's place; ``permission_denied``;
``dangling_symlink``; ``too_many_open_files`` …). A refusal is counted
(``refused_<reason>``) and logged (``file_refused``) when it first appears, not at
every scan; ``file_refusal_cleared`` when the path is gone or readable again. While
any refusal stands, the stream reports it as its degraded reason (heartbeat faults,
status, metrics). A file that vanished between its listing and its open is the
ordinary race of a rotation: it is only counted (``vanished_before_open``).
"""

from __future__ import annotations

import structlog

from agent.ingest.tracked import VANISHED

log = structlog.get_logger("robotpm.agent")

SHOWN = 3
"""Refused paths named in the degraded reason (the rest are counted)."""


class Refusals:
    """The refusals standing after the last scan of one stream."""

    def __init__(self, stream: str, counters: dict[str, int]) -> None:
        self._stream = stream
        self._counters = counters
        self.standing: dict[str, str] = {}
        """Path → reason, as the last scan found them."""

    def update(self, found: dict[str, str]) -> None:
        """Take the refusals of a complete scan: count and log the new ones, log the cleared ones."""
        for path, reason in found.items():
            if self.standing.get(path) == reason:
                continue
            key = f"refused_{reason}"
            self._counters[key] = self._counters.get(key, 0) + 1
            log.warning("file_refused", stream=self._stream, path=path, reason=reason)
        for path, reason in self.standing.items():
            if path not in found:
                log.info("file_refusal_cleared", stream=self._stream, path=path, was=reason)
        self.standing = dict(found)

    def note_open_failure(self, found: dict[str, str], path: str, reason: str) -> None:
        """A listed file that could not be opened: a refusal of this scan, or a vanished file."""
        if reason == VANISHED:
            self._counters["vanished_before_open"] += 1
        else:
            found[path] = reason

    def describe(self) -> str | None:
        """The degraded reason while refusals stand (None: none does)."""
        if not self.standing:
            return None
        items = sorted(self.standing.items())
        named = ", ".join(f"{path} ({reason})" for path, reason in items[:SHOWN])
        more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
        noun = "file" if len(items) == 1 else "files"
        return f"refused {len(items)} {noun}: {named}{more}"
