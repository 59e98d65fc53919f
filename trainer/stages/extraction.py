"""DataExtractionAnalysis: read raw sensor logs (and ground truth) into arrays, with quarantine.

Sources: a CSV log file, a directory of them (a simulator output directory with
one sub-directory per robot, or an agent log directory), or a SQL database
(`trainer.sources.sql`). Lines are parsed with the agent's own `RecordParser`, so
the trainer reads a log exactly as the agent will; lines it rejects are
quarantined with their file, line number, byte offset and reason.

Ground truth, when present, is a ``truth.csv`` beside the log (the simulator's
``ts,robot,mode,component,health,failure,rul_s``), aligned to the log by timestamp.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.errors import RecordError
from agent.contract.records import RecordParser, RecordSchema
from agent.contract.timerule import StreamClock, TimeRule
from trainer.config import LabelConfig, TrainerConfig
from trainer.errors import DataError, SourceError
from trainer.labels import (
    FailureEvent,
    flag_column_values,
    flag_events,
    flag_is_on,
    merge_close_events,
    read_event_log,
    truth_from_events,
)
from trainer.stages.truth import HEALTHY, QuarantinedRow, Truth

FloatArray = npt.NDArray[np.float64]
StrArray = npt.NDArray[np.str_]

TRUTH_FILE = "truth.csv"
TRUTH_COLUMNS = ("ts", "robot", "mode", "component", "health", "failure", "rul_s")
_BLOCK_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class RobotSeries:
    """The good samples of one robot's stream, in time order."""

    robot: str
    source: str
    timestamps: FloatArray
    values: FloatArray
    """Shape ``(n, n_channels)`` in canonical channel order."""
    truth: Truth | None = None

    def __len__(self) -> int:
        return len(self.timestamps)


@dataclass(slots=True)
class Dataset:
    """Everything extracted from one source: series per robot, quarantine, content hash."""

    channels: tuple[str, ...]
    series: list[RobotSeries]
    quarantine: list[QuarantinedRow] = field(default_factory=list)
    data_hash: str = ""
    sources: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    """The snapshot: every file read, with its own sha256 and size (the data version is `data_hash`)."""
    notes: list[str] = field(default_factory=list)
    """What the parser let pass and says so, e.g. ``arm1.csv: columns not mapped … are ignored``."""

    @property
    def n_rows(self) -> int:
        """Good rows over all robots."""
        return sum(len(s) for s in self.series)

    @property
    def has_truth(self) -> bool:
        """Whether every series carries ground truth."""
        return bool(self.series) and all(s.truth is not None for s in self.series)

    def failure_events(self) -> list[FailureEvent]:
        """Every failure in the ground truth: robot, time, mode and component at each failure sample."""
        events: list[FailureEvent] = []
        for series in self.series:
            truth = series.truth
            if truth is None:
                continue
            for index in np.flatnonzero(truth.failure).tolist():
                at = index if truth.mode[index] != HEALTHY or index == 0 else index - 1
                events.append(
                    FailureEvent(
                        series.robot,
                        float(series.timestamps[index]),
                        None,
                        str(truth.mode[at]),
                        str(truth.component[at]),
                        series.source,
                    )
                )
        return events

    def profile(self) -> dict[str, object]:
        """Row counts, quarantine by reason, and per-channel ranges, nulls and types (JSON-ready)."""
        values = np.concatenate([s.values for s in self.series]) if self.series else np.empty((0, 0))
        channels: dict[str, object] = {}
        for i, name in enumerate(self.channels):
            column = values[:, i] if len(values) else np.empty(0)
            finite = column[np.isfinite(column)]
            channels[name] = {
                "type": "float64",
                "count": len(column),
                "nulls": int(len(column) - len(finite)),
                "min": float(finite.min()) if len(finite) else None,
                "max": float(finite.max()) if len(finite) else None,
                "mean": float(finite.mean()) if len(finite) else None,
                "std": float(finite.std()) if len(finite) else None,
            }
        reasons: dict[str, int] = {}
        for row in self.quarantine:
            reasons[row.reason] = reasons.get(row.reason, 0) + 1
        modes: dict[str, int] = {}
        for s in self.series:
            if s.truth is not None:
                names, counts = np.unique(s.truth.mode, return_counts=True)
                for name, count in zip(names.tolist(), counts.tolist(), strict=True):
                    modes[name] = modes.get(name, 0) + count
        return {
            "data_hash": self.data_hash,
            "sources": self.sources,
            "rows": self.n_rows,
            "robots": {s.robot: len(s) for s in self.series},
            "quarantined": len(self.quarantine),
            "quarantine_reasons": reasons,
            "truth_modes": modes,
            "channels": channels,
        }

    def write_quarantine(self, path: Path) -> None:
        """Quarantined rows as a CSV file: source, line, offset, reason, detail."""
        path.write_bytes(self.quarantine_csv())

    def snapshot(self) -> dict[str, Any]:
        """The data version and the files it was computed from (JSON-ready)."""
        return {
            "data_hash": self.data_hash,
            "rows": self.n_rows,
            "files": self.files,
            "sources": self.sources,
        }

    def quarantine_csv(self) -> bytes:
        """Quarantined rows as CSV bytes: source, line, offset, reason, detail."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["source", "line", "offset", "reason", "detail"])
        for row in self.quarantine:
            writer.writerow([row.source, row.line, row.offset, row.reason, row.detail])
        return buffer.getvalue().encode()

    def write_profile(self, path: Path) -> None:
        """The profile as indented JSON."""
        path.write_text(json.dumps(self.profile(), indent=2) + "\n", encoding="utf-8")


class DataExtractionAnalysis:
    """Stage 1: finds and reads the sources named by a path, validates, quarantines, profiles.

    Example::

        dataset = DataExtractionAnalysis(config.record_schema()).extract(Path("sim/train"))
    """

    def __init__(
        self, schema: RecordSchema, labels: LabelConfig | None = None, time_rule: TimeRule | None = None
    ) -> None:
        self._schema = schema
        self._time_rule = time_rule or TimeRule(uptime=schema.timestamp_kind == "uptime")
        self._labels = labels or LabelConfig()
        self._files: list[dict[str, Any]] = []

    @classmethod
    def for_config(cls, config: TrainerConfig) -> DataExtractionAnalysis:
        """The extraction a trainer config describes: its record schema and its label source."""
        return cls(config.record_schema(), config.labels, config.time_rule())

    @property
    def schema(self) -> RecordSchema:
        """How log lines are parsed."""
        return self._schema

    def extract(self, path: Path) -> Dataset:
        """Read a CSV log file or a directory of logs (one robot per sub-directory); see the module."""
        events = self._labels.events if self._labels.source == "events" else None
        ignore = frozenset({events.event_log.resolve()}) if events is not None else frozenset()
        files = discover_logs(path, ignore)
        self._files = []
        digest = hashlib.sha256()
        dataset = Dataset(channels=self._schema.canonical_channels, series=[])
        by_robot: dict[str, list[FailureEvent]] = {}
        if events is not None:
            data = _read_bytes(events.event_log)
            self._snapshot(events.event_log, data, digest)
            logged, refused = read_event_log(data, str(events.event_log), events)
            dataset.quarantine.extend(refused)
            for event in logged:
                by_robot.setdefault(event.robot, []).append(event)
            robots = {robot for robot, _ in files}
            for robot in sorted(set(by_robot) - robots):
                dataset.quarantine.extend(
                    QuarantinedRow(
                        str(events.event_log),
                        e.line,
                        0,
                        "event_robot_not_in_data",
                        f"robot {robot!r}, {e.mode}",
                    )
                    for e in by_robot.pop(robot)
                )
        for robot, log_files in files:
            series, rejected = self._read_robot(
                robot, log_files, digest, by_robot.get(robot, []), dataset.notes
            )
            dataset.quarantine.extend(rejected)
            dataset.sources.extend(str(f) for f in log_files)
            if len(series):
                dataset.series.append(series)
        dataset.data_hash = digest.hexdigest()
        dataset.files = list(self._files)
        if not dataset.series:
            raise DataError(f"{path}: no usable rows (all {len(dataset.quarantine)} rows quarantined)")
        return dataset

    def _snapshot(self, path: Path, data: bytes, digest: Any) -> None:
        """Record a file's own hash and size, and fold it into the dataset's content hash."""
        file_hash = hashlib.sha256(data).hexdigest()
        self._files.append({"path": str(path), "sha256": file_hash, "bytes": len(data)})
        digest.update(f"{path.parent.name}/{path.name}\0{file_hash}\0".encode())

    def _read_robot(
        self,
        robot: str,
        log_files: Sequence[Path],
        digest: Any,
        events: Sequence[FailureEvent],
        notes: list[str],
    ) -> tuple[RobotSeries, list[QuarantinedRow]]:
        stamps: list[FloatArray] = []
        values: list[FloatArray] = []
        flags: list[str] = []
        rejected: list[QuarantinedRow] = []
        flag = self._labels.flag if self._labels.source == "flag" else None
        for log in log_files:
            data = _read_bytes(log)
            self._snapshot(log, data, digest)
            ts, vals, bad, starts = parse_log_bytes(data, self._schema, str(log), self._time_rule, notes)
            stamps.append(ts)
            values.append(vals)
            rejected.extend(bad)
            if flag is not None:
                flags.extend(flag_column_values(data, starts, flag.column, self._schema, str(log)))
        timestamps = np.concatenate(stamps)
        table = np.concatenate(values)
        order = np.argsort(timestamps, kind="stable")
        timestamps, table = timestamps[order], table[order]
        source = str(log_files[0])
        labels = self._labels
        truth = None
        if labels.source == "truth":
            truth_path = log_files[0].parent / TRUTH_FILE
            if truth_path.exists():
                truth_bytes = _read_bytes(truth_path)
                self._snapshot(truth_path, truth_bytes, digest)
                truth, keep, unlabelled = align_truth(
                    truth_bytes, timestamps, str(truth_path), labels.tolerance_s
                )
                rejected.extend(unlabelled)
                timestamps, table = timestamps[keep], table[keep]
        else:
            if flag is not None:
                on = flag_is_on([flags[i] for i in order.tolist()], flag)
                events, merged = flag_events(robot, source, timestamps, on, flag)
            else:
                assert labels.events is not None
                events, merged = merge_close_events(events, labels.events.min_gap_s, source)
            rejected.extend(merged)
            truth, unmatched = truth_from_events(
                timestamps, events, horizon_s=labels.horizon_s, tolerance_s=labels.tolerance_s, source=source
            )
            rejected.extend(unmatched)
        return RobotSeries(robot, source, timestamps, table, truth), rejected


def discover_logs(path: Path, ignore: frozenset[Path] = frozenset()) -> list[tuple[str, list[Path]]]:
    """(robot, log files) pairs under `path`: a file, a robot directory or a fleet directory.

    Files in `ignore` (resolved paths, e.g. the event log) are not logs.
    """
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_file():
        return [(path.parent.name or "robot", [path])]
    direct = _logs_in(path, ignore)
    if direct:
        return [(path.name, direct)]
    found = [(sub.name, _logs_in(sub, ignore)) for sub in sorted(p for p in path.iterdir() if p.is_dir())]
    found = [(robot, logs) for robot, logs in found if logs]
    if not found:
        raise SourceError(f"{path}: no CSV log files (expected *.csv here or in robot sub-directories)")
    return found


def _logs_in(directory: Path, ignore: frozenset[Path] = frozenset()) -> list[Path]:
    logs = [
        p
        for p in directory.iterdir()
        if p.is_file()
        and p.name != TRUTH_FILE
        and _log_suffix(p.name) is not None
        and p.resolve() not in ignore
    ]
    # rotated files (arm1.csv.2, arm1.csv.1) are older than the live one: oldest first
    return sorted(logs, key=_rotation_key)


def _log_suffix(name: str) -> str | None:
    """``.csv`` or ``.jsonl`` for a log file name (rotated ones too: ``arm1.csv.2``), else None."""
    for suffix in (".csv", ".jsonl"):
        base, found, rest = name.partition(suffix)
        if found and base and (not rest or (rest[1:].isdigit() and rest[0] == ".")):
            return suffix
    return None


def _rotation_key(path: Path) -> tuple[str, int]:
    suffix = _log_suffix(path.name) or ".csv"
    base, _, rest = path.name.partition(suffix)
    generation = int(rest[1:]) if rest[1:].isdigit() else 0
    return base, -generation


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from exc


def parse_log_bytes(
    data: bytes,
    schema: RecordSchema,
    source: str,
    time_rule: TimeRule | None = None,
    notes: list[str] | None = None,
) -> tuple[FloatArray, FloatArray, list[QuarantinedRow], npt.NDArray[np.int64]]:
    """Parse a whole log with the agent's parser and the agent's time rule; bad lines are quarantined.

    The file's times are judged by one `StreamClock` (`time_rule`, default: the agent's defaults),
    as the agent judges a stream's: an outlier time is quarantined and moves nothing. What the
    parser notes (columns it ignores) is added to `notes`, prefixed with the source.

    Returns timestamps, values, the quarantined rows and the byte offset of each good row's line.

    CSV logs start with their header; a source named ``*.jsonl`` (or rotated
    ``*.jsonl.N``) is read as JSON lines with the same channel mapping.
    """
    n_channels = len(schema.channels)
    if not data.strip():
        raise DataError(f"{source}: empty file")
    if _log_suffix(Path(source).name) == ".jsonl":
        schema = schema.model_copy(update={"format": "jsonl"})
        parser = RecordParser(schema)
        header_end, body_start = -1, 0
    else:
        header_end = data.find(b"\n")
        header = data[: header_end if header_end >= 0 else len(data)]
        parser = RecordParser(schema)
        try:
            parser.set_header(header.rstrip(b"\r"))
        except (RecordError, UnicodeDecodeError) as exc:
            raise DataError(f"{source}: {exc}") from None
        body_start = header_end + 1 if header_end >= 0 else len(data)
        if notes is not None:
            notes.extend(f"{Path(source).name}: {note}" for note in parser.notes)
    clock = StreamClock(time_rule or TimeRule(uptime=schema.timestamp_kind == "uptime"))
    rejected: list[QuarantinedRow] = []
    last_newline = data.rfind(b"\n")
    if last_newline + 1 < len(data) and last_newline >= header_end:
        rejected.append(
            QuarantinedRow(source, _line_of(data, last_newline + 1), last_newline + 1, "partial_line")
        )
    stamps: list[FloatArray] = []
    values: list[FloatArray] = []
    offsets: list[npt.NDArray[np.int64]] = []
    position = body_start
    line_base = 2 if body_start else 1
    while position < last_newline + 1:
        end = data.rfind(b"\n", position, min(position + _BLOCK_BYTES, last_newline + 1)) + 1
        if end <= position:
            end = data.find(b"\n", position) + 1
        block = data[position:end]
        result = parser.parse(block, base_offset=position, clock=clock)
        stamps.append(result.batch.timestamps)
        values.append(result.batch.values)
        offsets.append(result.batch.starts)
        for bad in result.rejected:
            line = line_base + block.count(b"\n", 0, bad.offset - position)
            rejected.append(QuarantinedRow(source, line, bad.offset, bad.reason, bad.detail))
        line_base += block.count(b"\n")
        position = end
    if not stamps:
        return np.empty(0), np.empty((0, n_channels)), rejected, np.empty(0, dtype=np.int64)
    return np.concatenate(stamps), np.concatenate(values), rejected, np.concatenate(offsets)


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def align_truth(
    data: bytes, timestamps: FloatArray, source: str, tolerance_s: float = 1e-4
) -> tuple[Truth, npt.NDArray[np.bool_], list[QuarantinedRow]]:
    """Truth rows matched to log timestamps, the nearest within `tolerance_s`.

    Log rows without a truth row that near are dropped and quarantined (``no_label``).
    """
    header_end = data.find(b"\n")
    if not data.strip() or header_end < 0:
        raise DataError(f"{source}: empty truth file")
    header = [h.strip() for h in data[:header_end].decode("utf-8", errors="replace").strip().split(",")]
    missing = [c for c in TRUTH_COLUMNS if c not in header and c != "robot"]
    if missing:
        raise DataError(f"{source}: truth file lacks column(s) {missing}; it has {header}")
    columns = _truth_columns(data[header_end + 1 :], header, source)
    ts, health, failure, rul, mode, component = columns
    order = np.argsort(ts, kind="stable")
    ts, health, failure, rul, mode, component = (
        a[order] for a in (ts, health, failure, rul, mode, component)
    )
    pos = np.clip(np.searchsorted(ts, timestamps), 0, len(ts) - 1)
    before = np.clip(pos - 1, 0, len(ts) - 1)
    nearest = np.where(np.abs(ts[before] - timestamps) < np.abs(ts[pos] - timestamps), before, pos)
    keep = np.abs(ts[nearest] - timestamps) <= tolerance_s
    unlabelled = [
        QuarantinedRow(source, 0, 0, "no_label", f"no truth row for timestamp {timestamps[i]!r}")
        for i in np.flatnonzero(~keep).tolist()
    ]
    picked = nearest[keep]
    truth = Truth(
        mode=mode[picked],
        component=component[picked],
        health=health[picked],
        failure=failure[picked],
        rul_s=rul[picked],
    )
    return truth, keep, unlabelled


def _truth_columns(body: bytes, header: list[str], source: str) -> tuple[Any, ...]:
    """(ts, health, failure, rul_s, mode, component) arrays of a truth body; vectorised when clean."""
    width = len(header)
    index = {name: header.index(name) for name in TRUTH_COLUMNS if name in header}
    lines = body.replace(b"\r", b"").split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    lines = [line for line in lines if line.count(b",") == width - 1]
    if not lines:
        raise DataError(f"{source}: truth file has no rows")
    fields = b",".join(lines).split(b",")
    table = [fields[i::width] for i in range(width)]
    try:
        ts = np.array(table[index["ts"]], dtype=np.bytes_).astype(np.float64)
        health = np.array([v or b"nan" for v in table[index["health"]]], dtype=np.bytes_).astype(np.float64)
        rul_raw = [v.strip() or b"inf" for v in table[index["rul_s"]]]
        rul = np.array(rul_raw, dtype=np.bytes_).astype(np.float64)
    except ValueError as exc:
        raise DataError(f"{source}: non-numeric truth value ({exc})") from None
    rul = np.where(np.isfinite(rul) & (rul >= 0), rul, np.inf)
    failure = np.isin(np.array(table[index["failure"]], dtype=np.bytes_), [b"1", b"true", b"True"])
    mode = np.array(table[index["mode"]], dtype=np.bytes_).astype(np.str_)
    component = np.array(table[index["component"]], dtype=np.bytes_).astype(np.str_)
    return ts, health, failure, rul, np.char.strip(mode), np.char.strip(component)


def split_by_robot(dataset: Dataset, every: int = 4) -> tuple[Dataset, Dataset]:
    """(train, test): every `every`-th robot, counted from the last, is held out; none is on both sides."""
    robots = sorted(s.robot for s in dataset.series)
    if len(robots) < 2:
        raise DataError(f"{dataset.sources[:1]}: one robot only; a robot-wise split needs two")
    held = set(robots[len(robots) - 1 :: -every])

    def part(keep: bool, tag: str) -> Dataset:
        return Dataset(
            dataset.channels,
            [s for s in dataset.series if (s.robot in held) == keep],
            dataset.quarantine if not keep else [],
            hashlib.sha256(f"{dataset.data_hash}:{tag}".encode()).hexdigest(),
            dataset.sources,
        )

    return part(False, "train"), part(True, "test")


def concat_values(series: Iterable[RobotSeries]) -> FloatArray:
    """All samples of several series stacked (for profiling and reference statistics)."""
    parts = [s.values for s in series]
    return np.concatenate(parts) if parts else np.empty((0, 0))
