"""Sensor records: parsing CSV-with-header and JSON lines into canonical channels.

A controller writes one record per line: a timestamp (epoch seconds or ISO 8601)
and numeric channels, named however its exporter names them. A `RecordSchema`
maps those names to canonical channel names (from config.toml), so any export
can be read without code changes.

`RecordParser.parse` takes a block of complete lines and returns a `RecordBatch`
of the good records (numpy arrays, in canonical channel order) plus a list of
`RejectedLine`s, each with its reason and byte offset, for quarantine. A block of
clean CSV is parsed in one vectorised pass; a block with any bad line falls back
to line-by-line parsing so that only the bad lines are rejected.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.contract.errors import RecordError
from agent.contract.timerule import StreamClock, TimeRule

RecordFormat = Literal["csv", "jsonl"]
TimestampKind = Literal["epoch", "uptime"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

NEWLINE = 0x0A

RAW_KEEP = 256
"""A refused line keeps at most this many of its first bytes in `RejectedLine.raw`."""


class RecordSchema(BaseModel):
    """How to read one stream's lines: format, timestamp field, channel mapping and limits.

    Example::

        RecordSchema(format="csv", timestamp_field="ts",
                     channels={"J1_I": "j1_current", "J1_T": "j1_temp"})
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: RecordFormat = "csv"
    timestamp_field: str = "timestamp"
    channels: dict[str, str] = Field(min_length=1, description="Name in the file → canonical channel name.")
    limits: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Canonical channel → (low, high) accepted range."
    )
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    timestamp_kind: TimestampKind = Field(
        default="epoch",
        description="epoch: wall-clock time; uptime: the controller's time since boot, where a step back "
        "starts a new epoch (see agent.contract.timerule).",
    )

    @model_validator(mode="after")
    def _check(self) -> RecordSchema:
        canonical = list(self.channels.values())
        if len(set(canonical)) != len(canonical):
            raise ValueError("two file columns map to the same canonical channel")
        unknown = set(self.limits) - set(canonical)
        if unknown:
            raise ValueError(f"limits name unknown channels: {sorted(unknown)}")
        for name, (low, high) in self.limits.items():
            if not low <= high:
                raise ValueError(f"limits for {name}: low {low} > high {high}")
        return self

    @property
    def canonical_channels(self) -> tuple[str, ...]:
        """Canonical channel names, in mapping order."""
        return tuple(self.channels.values())


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A line that was not accepted, with where it was and why."""

    offset: int
    """Byte offset of the line's start in its file."""
    length: int
    """Length of the line in bytes, without its newline."""
    reason: str
    """Short machine-readable reason, e.g. ``field_count``, ``not_numeric``."""
    detail: str = ""
    """Human-readable detail."""
    raw: bytes = b""
    """The first bytes of the line, for the quarantine file."""


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Good records of one parsed block, in file order."""

    timestamps: FloatArray
    """Epoch seconds, shape ``(n,)``."""
    values: FloatArray
    """Shape ``(n, n_channels)`` in the schema's canonical channel order."""
    starts: IntArray
    """Byte offset of each record's line in its file."""
    ends: IntArray
    """Byte offset just past each record's newline."""

    def __len__(self) -> int:
        return len(self.timestamps)

    @classmethod
    def empty(cls, n_channels: int) -> RecordBatch:
        """A batch without records."""
        return cls(
            timestamps=np.empty(0),
            values=np.empty((0, n_channels)),
            starts=np.empty(0, dtype=np.int64),
            ends=np.empty(0, dtype=np.int64),
        )


@dataclass(slots=True)
class ParseResult:
    """What `RecordParser.parse` found in a block of lines."""

    batch: RecordBatch
    rejected: list[RejectedLine] = field(default_factory=list)


def parse_timestamp(text: str) -> float:
    """Epoch seconds from an epoch number or an ISO 8601 string (naive means UTC)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise RecordError(f"timestamp is not finite: {text!r}")
        return value
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise RecordError(f"timestamp is neither epoch seconds nor ISO 8601: {text[:40]!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def format_csv_line(timestamp: float, values: list[float] | tuple[float, ...], delimiter: str = ",") -> str:
    """One CSV record line (with newline), as a controller's logger would write it."""
    return delimiter.join([repr(float(timestamp)), *(repr(float(v)) for v in values)]) + "\n"


class RecordParser:
    """Parses blocks of complete lines of one file into canonical records.

    For CSV, call `set_header` with the file's header line first. The parser is
    stateless between blocks apart from that header, so it can be shared by
    every block of one file.
    """

    __slots__ = ("_columns", "_header", "_n_fields", "_schema", "_ts_column")

    def __init__(self, schema: RecordSchema) -> None:
        self._schema = schema
        self._header: tuple[str, ...] | None = None
        self._columns: IntArray = np.empty(0, dtype=np.int64)
        self._ts_column = -1
        self._n_fields = 0

    @property
    def schema(self) -> RecordSchema:
        """The schema this parser applies."""
        return self._schema

    @property
    def header(self) -> tuple[str, ...] | None:
        """The CSV header in use, or None before `set_header`."""
        return self._header

    def set_header(self, line: bytes | str) -> None:
        """Read a CSV header line; raises `RecordError` naming any missing column."""
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        names = tuple(name.strip() for name in text.strip().split(self._schema.delimiter))
        missing = [n for n in (self._schema.timestamp_field, *self._schema.channels) if n not in names]
        if missing:
            raise RecordError(f"header lacks column(s) {missing}; it has {list(names)}")
        self._header = names
        self._ts_column = names.index(self._schema.timestamp_field)
        self._columns = np.array([names.index(n) for n in self._schema.channels], dtype=np.int64)
        self._n_fields = len(names)

    def is_header(self, line: bytes) -> bool:
        """Whether a line looks like this schema's CSV header (it names the timestamp field)."""
        first = line.split(self._schema.delimiter.encode(), 1)[0].strip()
        return first == self._schema.timestamp_field.encode() or (
            self._schema.timestamp_field.encode() in line.split(self._schema.delimiter.encode())
        )

    def parse(
        self,
        data: bytes,
        base_offset: int = 0,
        last_timestamp: float | None = None,
        backwards_tolerance_s: float = 0.0,
        *,
        clock: StreamClock | None = None,
    ) -> ParseResult:
        r"""Parse `data`, a block of complete lines each ending in a newline.

        Args:
            data: the bytes, which must be empty or end with ``b"\\n"``.
            base_offset: byte offset of ``data[0]`` in its file.
            last_timestamp: without `clock`: the newest timestamp accepted before this block, if any.
            backwards_tolerance_s: without `clock`: how far a timestamp may go back before it is
                rejected (no outlier rule applies).
            clock: the stream's clock (`agent.contract.timerule`), which judges every time and
                moves on with the accepted ones; the two arguments before are then unused.

        """
        if clock is None:
            clock = StreamClock(TimeRule(backwards_tolerance_s, jump_s=math.inf), last_timestamp)
        if data and data[-1] != NEWLINE:
            raise ValueError("parse() takes complete lines only")
        n_channels = len(self._schema.channels)
        if not data:
            return ParseResult(RecordBatch.empty(n_channels))
        newline_at = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == NEWLINE)
        starts = np.concatenate(([0], newline_at[:-1] + 1)).astype(np.int64)
        ends = (newline_at + 1).astype(np.int64)
        if self._schema.format == "csv":
            if self._header is None:
                raise RecordError("CSV block parsed before its header was set")
            fast = self._parse_csv_fast(data, len(starts))
            if fast is not None:
                timestamps, values = fast
                result = ParseResult(
                    RecordBatch(timestamps, values, starts + base_offset, ends + base_offset)
                )
                return self._validate(result, data, base_offset, clock)
        return self._validate(self._parse_lines(data, starts, ends, base_offset), data, base_offset, clock)

    def _parse_csv_fast(self, data: bytes, n_lines: int) -> tuple[FloatArray, FloatArray] | None:
        """All lines at once (numpy's C tokenizer), or None when any line needs a closer look.

        It accepts exactly what the line-by-line path accepts (Python ``float`` syntax,
        surrounding blanks, CRLF line ends); anything else (a wrong field count, a blank line,
        NUL bytes, an ISO timestamp, a non-number) sends the block to that path.
        """
        delimiter = self._schema.delimiter.encode()
        if data.count(delimiter) != n_lines * (self._n_fields - 1) or b"\x00" in data:
            return None
        try:  # data holds at least one line here, so loadtxt has no "empty input" warning to give
            table = np.loadtxt(
                io.BytesIO(data),
                delimiter=self._schema.delimiter,
                comments=None,
                dtype=np.float64,
                ndmin=2,
                encoding="latin-1",
            )
        except (ValueError, UnicodeError):
            return None
        if table.shape != (n_lines, self._n_fields):
            return None
        timestamps = np.ascontiguousarray(table[:, self._ts_column])
        values = np.ascontiguousarray(table[:, self._columns])
        return timestamps, values

    def _parse_lines(self, data: bytes, starts: IntArray, ends: IntArray, base_offset: int) -> ParseResult:
        n_channels = len(self._schema.channels)
        timestamps: list[float] = []
        rows: list[list[float]] = []
        good_starts: list[int] = []
        good_ends: list[int] = []
        rejected: list[RejectedLine] = []
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            raw = data[start : end - 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            try:
                ts, row = self._parse_one(raw)
            except RecordError as exc:
                reason, _, detail = str(exc).partition(": ")
                rejected.append(RejectedLine(base_offset + start, len(raw), reason, detail, raw[:RAW_KEEP]))
                continue
            timestamps.append(ts)
            rows.append(row)
            good_starts.append(base_offset + start)
            good_ends.append(base_offset + end)
        batch = RecordBatch(
            timestamps=np.array(timestamps, dtype=np.float64),
            values=np.array(rows, dtype=np.float64).reshape(len(rows), n_channels),
            starts=np.array(good_starts, dtype=np.int64),
            ends=np.array(good_ends, dtype=np.int64),
        )
        return ParseResult(batch, rejected)

    def _parse_one(self, raw: bytes) -> tuple[float, list[float]]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"not_utf8: invalid byte at position {exc.start}") from exc
        if "\x00" in text:
            raise RecordError("binary: line contains NUL bytes")
        if not text.strip():
            raise RecordError("empty: blank line")
        if self._schema.format == "jsonl":
            return self._parse_json(text)
        return self._parse_csv(text)

    def _parse_csv(self, text: str) -> tuple[float, list[float]]:
        assert self._header is not None
        fields = text.split(self._schema.delimiter)
        if tuple(f.strip() for f in fields) == self._header:
            raise RecordError("header: repeated header line")
        if len(fields) != self._n_fields:
            raise RecordError(f"field_count: expected {self._n_fields} fields, got {len(fields)}")
        ts = _timestamp_or_error(fields[self._ts_column])
        row = [_number_or_error(fields[i], self._header[i]) for i in self._columns.tolist()]
        return ts, row

    def _parse_json(self, text: str) -> tuple[float, list[float]]:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"not_json: {exc.msg} at column {exc.colno}") from exc
        if not isinstance(obj, dict):
            raise RecordError("not_json: a record must be a JSON object")
        if self._schema.timestamp_field not in obj:
            raise RecordError(f"missing_field: no {self._schema.timestamp_field!r}")
        ts = _timestamp_or_error(str(obj[self._schema.timestamp_field]))
        row: list[float] = []
        for name in self._schema.channels:
            if name not in obj:
                raise RecordError(f"missing_field: no {name!r}")
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise RecordError(f"not_numeric: {name}={value!r}")
            row.append(_number_or_error(str(value), name))
        return ts, row

    def _validate(
        self, result: ParseResult, data: bytes, base_offset: int, clock: StreamClock
    ) -> ParseResult:
        """Reject non-finite values, values out of range and times the stream's clock refuses."""
        batch = result.batch
        if not len(batch):
            return result
        finite = np.isfinite(batch.values).all(axis=1) & np.isfinite(batch.timestamps)
        in_range = np.ones(len(batch), dtype=bool)
        limits = self._schema.limits
        if limits:
            channels = self._schema.canonical_channels
            for name, (low, high) in limits.items():
                column = batch.values[:, channels.index(name)]
                in_range &= (column >= low) & (column <= high)
        verdict = clock.judge(batch.timestamps, ~(finite & in_range))
        refused = [verdict.reasons[i] is not None for i in range(len(batch))]
        keep = finite & in_range & ~np.array(refused, dtype=bool)
        if keep.all():
            return ParseResult(
                RecordBatch(verdict.times, batch.values, batch.starts, batch.ends), result.rejected
            )
        rejected = list(result.rejected)
        for i in np.flatnonzero(~keep).tolist():
            if not finite[i]:
                reason, detail = "not_finite", _values_detail(batch, i)
            elif not in_range[i]:
                reason, detail = "out_of_range", _values_detail(batch, i)
            else:
                reason, detail = verdict.reasons[i] or "invalid", verdict.details[i]
            raw = _line_at(data, int(batch.starts[i]) - base_offset, int(batch.ends[i]) - base_offset)
            rejected.append(RejectedLine(int(batch.starts[i]), len(raw), reason, detail, raw[:RAW_KEEP]))
        rejected.sort(key=lambda r: r.offset)
        kept = RecordBatch(verdict.times[keep], batch.values[keep], batch.starts[keep], batch.ends[keep])
        return ParseResult(kept, rejected)


def _line_at(data: bytes, start: int, end: int) -> bytes:
    """The line ``data[start:end]`` without its newline (and a CR before it)."""
    raw = data[start : end - 1]
    return raw[:-1] if raw.endswith(b"\r") else raw


def _values_detail(batch: RecordBatch, i: int) -> str:
    return f"values {batch.values[i].tolist()[:8]}"


def _timestamp_or_error(text: str) -> float:
    try:
        return parse_timestamp(text)
    except RecordError as exc:
        raise RecordError(f"bad_timestamp: {exc}") from exc


def _number_or_error(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RecordError(f"not_numeric: {name}={text.strip()[:40]!r}") from None
