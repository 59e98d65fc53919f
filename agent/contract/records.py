"""Sensor records: parsing CSV-with-header and JSON lines into canonical channels.

A controller writes one record per line: a timestamp and numeric channels, named
however its exporter names them. A `RecordSchema` maps those names to canonical
channel names (from config.toml), so any export can be read without code changes.
Records are read as controllers write them:

* **CSV** per RFC 4180: cells may be quoted (``"a;b"``, a doubled quote ``""`` inside
  stands for one); after unquoting, one more pair of quotes around a whole cell is
  dropped too (exporters that quote twice write ``\"\"\"2022-01-01T00:00:00Z\"\"\"``). The
  delimiter, the quote character and the decimal separator (``.`` or ``,``) come from
  the schema. A quoted cell cannot hold a newline (one record is one line).
* **Column names** are matched exactly, spaces kept (a column ``"cycle "`` is mapped as
  ``cycle ``); a mapped name with no exact match matches the one column whose name
  equals it once blanks are trimmed. Columns not mapped are ignored, whatever they
  hold (text included): `RecordParser.notes` names them.
* **Values**: numbers (Python ``float`` syntax, with the schema's decimal separator),
  and booleans ``true``/``false`` in any case as 1.0/0.0; 0/1 flags are numbers.
* **Timestamps**: an epoch number in the schema's ``timestamp_unit`` (``s``, ``ms``,
  ``us``, ``ns``, or ``auto``: by magnitude, see `epoch_seconds`), or ISO 8601 with or
  without a zone; a time without a zone is in the schema's ``timezone`` (default UTC).
  With ``timestamp_kind = "uptime"`` the number is the controller's time since boot and
  a reboot starts a new epoch (`agent.contract.timerule`).

`RecordParser.parse` takes a block of complete lines and returns a `RecordBatch`
of the good records (numpy arrays, in canonical channel order) plus a list of
`RejectedLine`s, each with its reason, byte offset and raw bytes, for quarantine. A
block of plain CSV (no quote characters, only numbers in the mapped columns) is parsed
in one vectorised pass; any other block is read line by line, so that only the bad lines
are rejected. Times are then judged by the stream's clock (`agent.contract.timerule`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from functools import cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agent.contract.errors import RecordError
from agent.contract.timerule import StreamClock, TimeRule

RecordFormat = Literal["csv", "jsonl"]
TimestampKind = Literal["epoch", "uptime"]
TimestampUnit = Literal["s", "ms", "us", "ns", "auto"]

UNIT_SECONDS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
"""Seconds per unit of an epoch or uptime number."""
BOOLEANS = {"true": 1.0, "false": 0.0}
"""Boolean cells (any case) and the values they stand for."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

NEWLINE = 0x0A

RAW_KEEP = 256
"""A refused line keeps at most this many of its first bytes in `RejectedLine.raw`."""


class RecordReading(BaseModel):
    """How a stream's lines are read: the keys a `RecordSchema` and an agent stream's table share.

    Declared once, so a stream in config.toml and the schema built from it cannot drift
    apart; each setting that cannot work with another is refused naming its own key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: RecordFormat = "csv"
    timestamp_field: str = "timestamp"
    channels: dict[str, str] = Field(
        min_length=1, description="Column name in the file → canonical channel name."
    )
    limits: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Canonical channel → (low, high) accepted range."
    )
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


class RecordSchema(RecordReading):
    """How to read one stream's lines: format, timestamp field, channel mapping and limits.

    Example::

        RecordSchema(format="csv", timestamp_field="ts",
                     channels={"J1_I": "j1_current", "J1_T": "j1_temp"})
    """

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
        check_reading(self.delimiter, self.quote, self.decimal, self.timestamp_unit, self.timestamp_kind)
        zone_of(self.timezone)
        return self

    @property
    def zone(self) -> tzinfo:
        """The zone of ISO times written without one."""
        return zone_of(self.timezone)

    @property
    def canonical_channels(self) -> tuple[str, ...]:
        """Canonical channel names, in mapping order."""
        return tuple(self.channels.values())


def check_reading(delimiter: str, quote: str, decimal: str, unit: str, kind: str) -> None:
    """Raise `ValueError` when these reading settings cannot work together."""
    if delimiter in "\r\n" or quote in "\r\n":
        raise ValueError("delimiter and quote cannot be a line end")
    if delimiter == quote:
        raise ValueError(f"delimiter and quote are the same character {delimiter!r}")
    if delimiter == decimal:
        raise ValueError(f"delimiter {delimiter!r} is also the decimal separator")
    if unit == "auto" and kind == "uptime":
        raise ValueError("timestamp_unit auto cannot tell an uptime's unit: name it (s, ms, us or ns)")


@cache
def zone_of(name: str) -> tzinfo:
    """The zone named `name` (UTC or an IANA name such as Europe/Berlin); `ValueError` if unknown."""
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use UTC or an IANA name like Europe/Berlin)") from exc


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


def epoch_seconds(value: float, unit: str = "s") -> float:
    """Seconds from a number in `unit`; ``auto`` reads ≥ 1e17 as ns, ≥ 1e14 as µs, ≥ 1e11 as ms, else s.

    (So ``auto`` takes millisecond epochs before March 1973 for seconds: name the unit for those.)
    """
    if unit == "auto":
        size = abs(value)
        unit = "ns" if size >= 1e17 else "us" if size >= 1e14 else "ms" if size >= 1e11 else "s"
    return value * UNIT_SECONDS[unit]


def _epoch_array(values: FloatArray, unit: str) -> FloatArray:
    if unit == "s":
        return values
    if unit != "auto":
        return values * UNIT_SECONDS[unit]
    size = np.abs(values)
    scale = np.select([size >= 1e17, size >= 1e14, size >= 1e11], [1e-9, 1e-6, 1e-3], 1.0)
    return values * scale


def unquote(text: str, quote: str = '"') -> str:
    """`text` without surrounding blanks and one pair of quotes around it, if any."""
    text = text.strip()
    if len(text) >= 2 and text[0] == quote and text[-1] == quote:
        return text[1:-1].strip()
    return text


def parse_timestamp(text: str, unit: str = "s", zone: tzinfo = timezone.utc) -> float:
    """Epoch seconds from an epoch number in `unit` or an ISO 8601 string (without a zone: in `zone`)."""
    text = unquote(text)
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise RecordError(f"timestamp is not finite: {text!r}")
        return epoch_seconds(value, unit)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RecordError(f"timestamp is neither an epoch number nor ISO 8601: {text[:40]!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
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

    __slots__ = (
        "_columns",
        "_header",
        "_n_fields",
        "_only_used",
        "_schema",
        "_trimmed",
        "_ts_column",
        "_used",
        "notes",
    )

    def __init__(self, schema: RecordSchema) -> None:
        self._schema = schema
        self._header: tuple[str, ...] | None = None
        self._trimmed: tuple[str, ...] = ()
        self._columns: IntArray = np.empty(0, dtype=np.int64)
        self._used: list[int] = []
        self._only_used = False
        self._ts_column = -1
        self._n_fields = 0
        self.notes: list[str] = []
        """What the parser noticed about the file and let pass, e.g. columns it ignores."""

    @property
    def schema(self) -> RecordSchema:
        """The schema this parser applies."""
        return self._schema

    @property
    def header(self) -> tuple[str, ...] | None:
        """The CSV header in use, or None before `set_header`."""
        return self._header

    def set_header(self, line: bytes | str) -> None:
        """Read a CSV header line (RFC 4180); raises `RecordError` naming any missing column."""
        text = line.decode("utf-8-sig") if isinstance(line, bytes) else line.removeprefix("\ufeff")
        text = text.rstrip("\r\n")
        try:
            names = tuple(self._split(text))
        except RecordError as exc:
            raise RecordError(f"header: {exc}") from None
        wanted = (self._schema.timestamp_field, *self._schema.channels)
        found = {name: _column_index(names, name) for name in wanted}
        missing = [name for name, index in found.items() if index is None]
        if missing:
            raise RecordError(f"header lacks column(s) {missing}; it has {list(names)}")
        self._header = names
        self._trimmed = tuple(name.strip() for name in names)
        self._ts_column = found[self._schema.timestamp_field] or 0
        self._columns = np.array([found[n] for n in self._schema.channels], dtype=np.int64)
        self._used = sorted({self._ts_column, *self._columns.tolist()})
        self._n_fields = len(names)
        ignored = [name for i, name in enumerate(names) if i not in self._used]
        self.notes = [f"columns not mapped to a channel are ignored: {ignored}"] if ignored else []

    def is_header(self, line: bytes) -> bool:
        """Whether a line looks like this schema's CSV header (it names the timestamp field)."""
        try:
            names = self._split(line.decode("utf-8-sig").rstrip("\r\n"))
        except (RecordError, UnicodeDecodeError):
            return False
        return _column_index(tuple(names), self._schema.timestamp_field) is not None

    def _split(self, text: str) -> list[str]:
        """The cells of one CSV line (RFC 4180 quoting); `RecordError` ``bad_quoting`` if malformed."""
        schema = self._schema
        if schema.quote not in text:
            return text.split(schema.delimiter)
        try:
            return next(csv.reader([text], delimiter=schema.delimiter, quotechar=schema.quote, strict=True))
        except csv.Error as exc:
            raise RecordError(f"bad_quoting: {exc}") from None

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
        schema = self._schema
        delimiter = schema.delimiter.encode()
        if data.count(delimiter) != n_lines * (self._n_fields - 1) or b"\x00" in data:
            return None
        if schema.quote.encode() in data:
            return None  # quoted cells: the line path reads them per RFC 4180
        if schema.decimal != ".":
            data = data.replace(schema.decimal.encode(), b".")
        table = self._load(data)
        if table is None and not self._only_used and len(self._used) < self._n_fields:
            # maybe an unmapped column is text: read only the mapped ones from now on (a little slower)
            self._only_used = True
            table = self._load(data)
            if table is None:
                self._only_used = False
        if table is None:
            return None
        columns = self._used if self._only_used else list(range(self._n_fields))
        if table.shape != (n_lines, len(columns)):
            return None
        position = {column: i for i, column in enumerate(columns)}
        timestamps = _epoch_array(
            np.ascontiguousarray(table[:, position[self._ts_column]]), schema.timestamp_unit
        )
        values = np.ascontiguousarray(table[:, [position[c] for c in self._columns.tolist()]])
        return timestamps, values

    def _load(self, data: bytes) -> FloatArray | None:
        """The block through numpy's C tokenizer: every column, or only the used ones; None if it fails."""
        try:  # data holds at least one line here, so loadtxt has no "empty input" warning to give
            table: FloatArray = np.loadtxt(
                io.BytesIO(data),
                delimiter=self._schema.delimiter,
                comments=None,
                dtype=np.float64,
                ndmin=2,
                encoding="latin-1",
                usecols=self._used if self._only_used else None,
            )
        except (ValueError, UnicodeError):
            return None
        return table

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
        fields = self._split(text)
        if tuple(f.strip() for f in fields) == self._trimmed:
            raise RecordError("header: repeated header line")
        if len(fields) != self._n_fields:
            raise RecordError(f"field_count: expected {self._n_fields} fields, got {len(fields)}")
        ts = self._timestamp(fields[self._ts_column])
        decimal = self._schema.decimal
        row = [_number_or_error(fields[i], self._header[i], decimal) for i in self._columns.tolist()]
        return ts, row

    def _timestamp(self, text: str) -> float:
        try:
            return parse_timestamp(text, self._schema.timestamp_unit, self._schema.zone)
        except RecordError as exc:
            raise RecordError(f"bad_timestamp: {exc}") from exc

    def _parse_json(self, text: str) -> tuple[float, list[float]]:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"not_json: {exc.msg} at column {exc.colno}") from exc
        if not isinstance(obj, dict):
            raise RecordError("not_json: a record must be a JSON object")
        if self._schema.timestamp_field not in obj:
            raise RecordError(f"missing_field: no {self._schema.timestamp_field!r}")
        ts = self._timestamp(str(obj[self._schema.timestamp_field]))
        row: list[float] = []
        for name in self._schema.channels:
            if name not in obj:
                raise RecordError(f"missing_field: no {name!r}")
            value = obj[name]
            if isinstance(value, bool):
                row.append(1.0 if value else 0.0)
                continue
            if not isinstance(value, (int, float, str)):
                raise RecordError(f"not_numeric: {name}={value!r}")
            row.append(_number_or_error(str(value), name, self._schema.decimal))
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
        keep = finite & in_range & ~verdict.refused
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
                reason, detail = verdict.reasons.get(i, ("invalid", ""))
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


def _column_index(names: tuple[str, ...], wanted: str) -> int | None:
    """Where `wanted` is in a header: the exact name, else the one name equal to it once trimmed."""
    if wanted in names:
        return names.index(wanted)
    trimmed = [i for i, name in enumerate(names) if name.strip() == wanted.strip()]
    return trimmed[0] if len(trimmed) == 1 else None


def _number_or_error(text: str, name: str, decimal: str = ".") -> float:
    cell = unquote(text)
    if decimal != ".":
        cell = cell.replace(decimal, ".")
    try:
        return float(cell)
    except ValueError:
        flag = BOOLEANS.get(cell.lower())
        if flag is not None:
            return flag
        raise RecordError(f"not_numeric: {name}={cell[:40]!r}") from None
