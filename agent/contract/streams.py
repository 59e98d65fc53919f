"""A sensor stream as both halves describe it: where its log files are and how to read them.

The agent follows a stream's files; the trainer reads the same files (or the same
channel mapping) for training, so one description serves both.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from agent.contract.configfile import ConfigSection
from agent.contract.records import RecordReading, RecordSchema
from agent.contract.topics import check_segment

STREAM_PATH_KEYS = frozenset({"directory"})
"""The stream keys whose relative paths resolve against the config file's directory."""


class StreamConfig(RecordReading, ConfigSection):
    """One sensor stream: a log directory of one robot arm (or other asset), and how its lines are read."""

    name: str = Field(description="Stream id, unique per agent, e.g. 'arm1'.")
    directory: Path
    patterns: tuple[str, ...] = ("*.csv",)
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
        return RecordSchema(**{key: getattr(self, key) for key in RecordReading.model_fields})
