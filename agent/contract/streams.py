"""A sensor stream as both halves describe it: where its log files are and how to read them.

The agent follows a stream's files; the trainer reads the same files (or the same
channel mapping) for training, so one description serves both.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.contract.records import RecordFormat, RecordSchema, TimestampKind
from agent.contract.topics import check_segment

STREAM_PATH_KEYS = frozenset({"directory"})
"""The stream keys whose relative paths resolve against the config file's directory."""


class StreamConfig(BaseModel):
    """One sensor stream: a log directory of one robot arm (or other asset)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Stream id, unique per agent, e.g. 'arm1'.")
    directory: Path
    patterns: tuple[str, ...] = ("*.csv",)
    format: RecordFormat = "csv"
    timestamp_field: str = "timestamp"
    timestamp_kind: TimestampKind = Field(
        default="epoch",
        description="epoch: wall-clock time; uptime: the controller's seconds since boot (a reboot starts a "
        "new epoch: see agent.contract.timerule).",
    )
    channels: dict[str, str] = Field(
        min_length=1, description="Column name in the file → canonical channel name."
    )
    limits: dict[str, tuple[float, float]] = Field(default_factory=dict)
    robot_id: str | None = Field(default=None, description="Defaults to agent.robot_id.")
    resample: bool = Field(
        default=False,
        description="Put the samples onto the model's rate (its feature spec's sampling) before windows "
        "are cut, with agent.contract.sampling; false: windows count samples as logged, and a rate the "
        "model was not trained for marks the stream degraded.",
    )

    @field_validator("name")
    @classmethod
    def _segment(cls, value: str) -> str:
        return check_segment(value, "stream name")

    def record_schema(self) -> RecordSchema:
        """The `RecordSchema` this stream's lines follow."""
        return RecordSchema(
            format=self.format,
            timestamp_field=self.timestamp_field,
            channels=self.channels,
            limits=self.limits,
            timestamp_kind=self.timestamp_kind,
        )
