"""Give the allocator's free memory back to the system (glibc ``malloc_trim``), where there is one.

Startup (config, manifest and model checks, the onnxruntime session) and reading a log leave
freed blocks in malloc's arenas that glibc keeps resident; ``trim`` returns them, so the agent's
RSS is what it holds rather than what it once held. On a libc without ``malloc_trim`` (musl) it
does nothing: this is an economy, never a condition of running.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_looked = False


def trim() -> bool:
    """Ask glibc to return free heap memory to the system; whether it released any (False without glibc)."""
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # no libc to open, or a libc without malloc_trim
            _trim = None
    return _trim is not None and bool(_trim(0))
