"""The config sections of the field-operations features: journal, shelving, control directory, log file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from agent.contract.configfile import ConfigSection as _Section


class JournalConfig(_Section):
    """The local alert journal (`agent.journal`): every event the agent emits, kept on the robot."""

    max_bytes: int = Field(
        default=32 << 20, ge=64 << 10, description="Oldest events are deleted beyond this many bytes."
    )
    max_age_s: float = Field(
        default=30 * 24 * 3600.0,
        gt=0,
        description="Events older than this (agent running time since they were written) are deleted.",
    )
    score_history: int = Field(
        default=60,
        ge=0,
        le=1000,
        description="Scores of the windows before each event kept with it, for explain's sparkline.",
    )


class ShelvingConfig(_Section):
    """Shelving and maintenance (ISA-18.2): alerts keep being scored and journaled, none is raised."""

    default_for_s: float = Field(
        default=3600.0, gt=0, description="How long a shelve lasts when the request names no duration."
    )
    max_for_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="The longest shelve the agent accepts: shelving is always time-limited.",
    )


class ControlConfig(_Section):
    """Where the CLI and the daemon meet: the status file and the shelve requests."""

    directory: Path | None = Field(
        default=None,
        description="Default: <state_dir>/control. The daemon creates it (mode 2770) and its requests/ "
        "sub-directory; only root and members of `group` can write requests there.",
    )
    group: str | None = Field(
        default=None,
        description="The group allowed to shelve and unshelve (e.g. 'robotpm'); None: the agent's own "
        "group, so only root and the agent itself.",
    )


class LoggingConfig(_Section):
    """An optional size-bounded rotating log file beside journald (stdout stays as it is)."""

    file: Path | None = Field(default=None, description="Also write every log line here (JSON lines).")
    file_max_bytes: int = Field(default=10 << 20, ge=4096, description="Rotate the file past this size.")
    file_backups: int = Field(default=3, ge=0, le=100, description="Rotated files kept (file.1 … file.N).")
