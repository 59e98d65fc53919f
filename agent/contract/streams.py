"""A sensor stream as both halves describe it: where its log files are and how to read them.

The agent follows a stream's files; the trainer reads the same files (or the same
channel mapping) for training, so one description serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from agent.contract.configfile import ConfigSection
from agent.contract.records import RecordFormat, RecordSchema, TimestampKind, TimestampUnit, zone_of
from agent.contract.topics import check_segment

STREAM_PATH_KEYS = frozenset({"directory"})
"""The stream keys whose relative paths resolve against the config file's directory."""


class StreamConfig(ConfigSection):
    """One sensor stream: a log directory of one robot arm (or other asset)."""

    name: str = Field(description="Stream id, unique per agent, e.g. 'arm1'.")
    directory: Path
    patterns: tuple[str, ...] = ("*.csv",)
    format: RecordFormat = "csv"
    timestamp_field: str = "timestamp"
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="CSV cell separator.")
    quote: str = Field(
        default='"', min_length=1, max_length=1, description="RFC 4180 quote character of CSV cells."
    )
    decimal: Literal[".", ","] = Field(default=".", description="Decimal separator of numbers.")
    timestamp_unit: TimestampUnit = Field(
        default="s",
        description="Unit of an epoch or uptime number: s, ms, us, ns, or auto (by magnitude; epochs only).",
    )
    timezone: str = Field(
        default="UTC", description="IANA zone (e.g. Europe/Berlin) of ISO 8601 times written without a zone."
    )
    timestamp_kind: TimestampKind = Field(
        default="epoch",
        description="epoch: wall-clock time; uptime: the controller's time since boot (a reboot starts a "
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

    @field_validator("quote", "decimal")
    @classmethod
    def _not_the_delimiter(cls, value: str, info: ValidationInfo) -> str:
        # delimiter is declared first, so it is validated (and in info.data) by now.
        delimiter = info.data.get("delimiter", ",")
        if value == delimiter or value in "\r\n":
            raise ValueError(f"{value!r} cannot be both {info.field_name} and the delimiter (or a line end)")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone_of(value)
        return value

    @field_validator("timestamp_kind")
    @classmethod
    def _uptime_unit(cls, value: str, info: ValidationInfo) -> str:
        if value == "uptime" and info.data.get("timestamp_unit") == "auto":
            raise ValueError(
                "an uptime's unit cannot be told by magnitude: set timestamp_unit to s, ms, us or ns"
            )
        return value

    def record_schema(self) -> RecordSchema:
        """The `RecordSchema` this stream's lines follow."""
        return RecordSchema(
            format=self.format,
            timestamp_field=self.timestamp_field,
            channels=self.channels,
            limits=self.limits,
            delimiter=self.delimiter,
            quote=self.quote,
            decimal=self.decimal,
            timestamp_unit=self.timestamp_unit,
            timezone=self.timezone,
            timestamp_kind=self.timestamp_kind,
        )
