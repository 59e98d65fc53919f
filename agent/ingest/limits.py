"""Whether the process's open-file limit leaves room for what the streams may hold open.

Each stream holds at most ``ingest.max_open_files`` log files open (see
`agent.ingest.parking`); the rest of the agent needs a few descriptors more (the state
database and its journal, the broker socket, inotify, the model, the status files).
The unit sets ``LimitNOFILE=4096``; a start under a lower limit (another unit, a shell
with ``ulimit -n 1024``) with many streams is said at start, not found out at the first
``EMFILE`` (which would still only degrade the stream that met it).
"""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger("robotpm.agent")

RESERVE = 256
"""Descriptors the agent needs besides the streams' log files."""


def descriptor_shortfall(streams: int, max_open_files: int) -> tuple[int, int] | None:
    """(soft limit, descriptors needed) when the limit is below what the streams may hold; else None."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = streams * max_open_files + RESERVE
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return None
    return soft, needed


def warn_if_short(streams: int, max_open_files: int) -> None:
    """Log ``open_file_limit_low`` (with what to change) when `descriptor_shortfall` finds one."""
    short = descriptor_shortfall(streams, max_open_files)
    if short is not None:
        log.warning(
            "open_file_limit_low",
            limit=short[0],
            needed=short[1],
            streams=streams,
            max_open_files=max_open_files,
            advice="raise LimitNOFILE (ulimit -n) or lower agent.ingest.max_open_files",
        )
