"""What rotation remembers between looks: ghosts of vanished content, and new files not yet judged.

Shared by `agent.ingest.rotation` (which decides), `agent.ingest.tracked` (a file
carries its `Pending` verdict-to-be) and `agent.ingest.checkpoint` (ghosts are saved
and restored), so that none of them has to import another for these types.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.ingest.identity import ContentMark


@dataclass(slots=True)
class Ghost:
    """The identity of content that vanished from its inode, waiting for a copy to claim it."""

    mark: ContentMark
    header: bytes | None
    born: float
    data_start: int = 0
    """Where the data lines began (after the file's own header line, if it had one)."""
    head: bytes | None = None
    """The consumed head itself, when known: a copy still shorter than it is recognised by it."""


@dataclass(slots=True)
class Pending:
    """A new file that may be a copy of known content: not read until that is decided."""

    kind: str  # "empty" | "ghost" | "copy"
    ghost: Ghost | None
    source_key: str | None
    size: int
    since: float
    verified: int = 0
    """For a copy: its first bytes known equal to the source's."""
