"""Failure labels by configuration: events from a flag column or an event log, made into per-sample truth.

``[trainer.labels] source`` says where failure events come from:

- ``truth``: the simulator's ``truth.csv`` beside each log (`trainer.stages.extraction`);
- ``flag``: a flag or state column of the log (`FlagLabels`): an event starts at each
  rising edge and lasts while the flag is on; edges closer than ``min_gap_s`` to the end
  of the event before are merged into it;
- ``events``: the controller's fault or stop log (`EventLogLabels`, CSV with a header or
  JSON lines), fields named as the controller names them.

Events become a `Truth` (`truth_from_events`): the samples at most ``horizon_s`` before an
onset carry that event's mode and component (health 0), other samples are healthy, the
sample nearest the onset (within ``tolerance_s``) is the failure, and samples from the
onset to the event's end are marked excluded (the robot is stopped). Modes and components
are free-form: they become the alert heads of the model.

Nothing is dropped silently: every event-log row that cannot be used, every event that
matches no sample and every merged edge is returned as a `QuarantinedRow` with its reason
(``event_*``), which the dataset's quarantine, ``profile.json`` and ``robotpm-train inspect``
show.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.contract.errors import RecordError
from agent.contract.records import RecordSchema, parse_timestamp
from trainer.config import EventLogLabels, FlagLabels
from trainer.errors import DataError
from trainer.stages.truth import HEALTHY, QuarantinedRow, Truth

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class FailureEvent:
    """One failure or stop of one robot."""

    robot: str
    onset: float
    """Epoch seconds at which it began."""
    end: float | None
    """Epoch seconds at which it ended, when known."""
    mode: str
    component: str
    source: str
    """Where it was read: ``file:line`` or ``file (flag column)``."""


def flag_column_values(
    data: bytes, starts: npt.NDArray[np.int64], column: str, schema: RecordSchema, source: str
) -> list[str]:
    """The raw value of the flag `column` on each line starting at `starts` (the log's good rows).

    CSV lines are split with RFC 4180 quoting; the column is found in the header by its exact
    name (spaces kept). JSON lines take the value of that key ("" when absent).
    """
    lines = [data[start : data.find(b"\n", start)].rstrip(b"\r") for start in starts.tolist()]
    text = [line.decode("utf-8", errors="replace") for line in lines]
    if source.endswith(".jsonl") or ".jsonl." in source:
        return [_json_field(line, column) for line in text]
    header_end = data.find(b"\n")
    header = next(
        csv.reader(
            [data[:header_end].rstrip(b"\r").decode("utf-8-sig", errors="replace")],
            delimiter=schema.delimiter,
        )
    )
    if column not in header:
        raise DataError(f"{source}: no column {column!r} for the failure flag; the header has {header}")
    index = header.index(column)
    return [row[index] if index < len(row) else "" for row in csv.reader(text, delimiter=schema.delimiter)]


def _json_field(line: str, key: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return ""
    value = record.get(key) if isinstance(record, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def flag_is_on(values: Sequence[str], config: FlagLabels) -> BoolArray:
    """Whether each raw value of the flag column means "on" (blanks and quotes trimmed)."""
    on = set(config.on) | ({"true"} if "True" in config.on or "true" in config.on else set())
    return np.array([value.strip().strip('"').strip() in on for value in values], dtype=bool)


def flag_events(
    robot: str, source: str, timestamps: FloatArray, on: BoolArray, config: FlagLabels
) -> tuple[list[FailureEvent], list[QuarantinedRow]]:
    """Events from a flag column: onset at each rising edge, end at the run's last on sample.

    An edge less than ``min_gap_s`` after the end of the event before it extends that event
    and is reported as ``event_merged``.
    """
    if not len(on):
        return [], []
    padded = np.concatenate(([False], on, [False]))
    rises = np.flatnonzero(padded[1:-1] & ~padded[:-2])
    falls = np.flatnonzero(padded[1:-1] & ~padded[2:])  # index of each run's last on sample
    events: list[FailureEvent] = []
    merged: list[QuarantinedRow] = []
    where = f"{source} (flag column {config.column!r})"
    for rise, fall in zip(rises.tolist(), falls.tolist(), strict=True):
        onset, end = float(timestamps[rise]), float(timestamps[fall])
        if events and onset - (events[-1].end or events[-1].onset) < config.min_gap_s:
            previous = events[-1]
            events[-1] = FailureEvent(robot, previous.onset, end, previous.mode, previous.component, where)
            merged.append(
                QuarantinedRow(
                    source,
                    0,
                    0,
                    "event_merged",
                    f"rising edge at {onset!r} is {onset - (previous.end or previous.onset):.3g} s after the "
                    f"event at {previous.onset!r}, under min_gap_s={config.min_gap_s:g}",
                )
            )
            continue
        events.append(FailureEvent(robot, onset, end, config.failure_mode, config.component, where))
    return events, merged


def read_event_log(
    data: bytes, source: str, config: EventLogLabels
) -> tuple[list[FailureEvent], list[QuarantinedRow]]:
    """Events of every robot from an event log; rows that cannot be used come back with their reason.

    A ``.jsonl`` source is read as JSON lines, anything else as CSV with a header (RFC 4180
    quoting). Times are epoch seconds or ISO 8601.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: the event log is not UTF-8 ({exc})") from None
    rows: list[tuple[int, dict[str, object] | None]] = []
    if source.endswith(".jsonl"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            rows.append((number, record if isinstance(record, dict) else None))
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [f for f in (config.time, config.robot, config.mode) if f not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{source}: event log lacks field(s) {missing}; it has {reader.fieldnames}")
        rows = [(reader.line_num, dict(row)) for row in reader]
    events: list[FailureEvent] = []
    refused: list[QuarantinedRow] = []
    for number, record in rows:
        event, problem = _event_of_row(record, config, f"{source}:{number}")
        if event is None:
            refused.append(QuarantinedRow(source, number, 0, problem[0], problem[1]))
        else:
            events.append(event)
    return events, refused


def _event_of_row(
    record: dict[str, object] | None, config: EventLogLabels, where: str
) -> tuple[FailureEvent | None, tuple[str, str]]:
    """One event from one row, or None and (reason, detail)."""
    if record is None:
        return None, ("event_bad_row", "not a JSON object")

    def field(name: str | None) -> str:
        value = record.get(name) if name else None
        return "" if value is None else str(value).strip()

    robot, mode_code = field(config.robot), field(config.mode)
    if not robot:
        return None, ("event_no_robot", f"field {config.robot!r} is empty")
    if not mode_code:
        return None, ("event_no_mode", f"field {config.mode!r} is empty")
    try:
        onset = parse_timestamp(field(config.time))
    except RecordError as exc:
        return None, ("event_bad_time", str(exc))
    end: float | None = None
    if config.end and field(config.end):
        try:
            end = parse_timestamp(field(config.end))
        except RecordError as exc:
            return None, ("event_bad_end", str(exc))
        if end < onset:
            return None, ("event_bad_end", f"end {end!r} is before the onset {onset!r}")
    component = field(config.component) or config.default_component
    mode = config.modes.get(mode_code, mode_code)
    return FailureEvent(robot, onset, end, mode, component, where), ("", "")


def merge_close_events(
    events: Sequence[FailureEvent], min_gap_s: float, source: str
) -> tuple[list[FailureEvent], list[QuarantinedRow]]:
    """One robot's events in onset order, those closer than `min_gap_s` to the one before merged into it."""
    kept: list[FailureEvent] = []
    merged: list[QuarantinedRow] = []
    for event in sorted(events, key=lambda e: e.onset):
        if kept and event.onset - (kept[-1].end or kept[-1].onset) < min_gap_s:
            merged.append(
                QuarantinedRow(
                    source,
                    0,
                    0,
                    "event_merged",
                    f"{event.source}: {event.mode} at {event.onset!r} is within min_gap_s={min_gap_s:g} of "
                    f"{kept[-1].source}",
                )
            )
            previous = kept[-1]
            end = max(e for e in (previous.end, event.end, event.onset) if e is not None)
            kept[-1] = FailureEvent(
                previous.robot, previous.onset, end, previous.mode, previous.component, previous.source
            )
            continue
        kept.append(event)
    return kept, merged


def truth_from_events(
    timestamps: FloatArray,
    events: Sequence[FailureEvent],
    *,
    horizon_s: float,
    tolerance_s: float,
    source: str,
) -> tuple[Truth, list[QuarantinedRow]]:
    """Per-sample truth of one robot from its events (in onset order); see the module.

    An event with no sample within `tolerance_s` of its onset is not used and comes back
    as ``event_no_sample`` (``event_outside_log`` when it lies outside the log's time span).
    """
    n = len(timestamps)
    unmatched: list[QuarantinedRow] = []
    used: list[tuple[FailureEvent, int]] = []
    for event in events:
        if not n or event.onset < timestamps[0] - tolerance_s or event.onset > timestamps[-1] + tolerance_s:
            span = f"[{timestamps[0]!r}, {timestamps[-1]!r}]" if n else "(no samples)"
            unmatched.append(
                QuarantinedRow(
                    source, 0, 0, "event_outside_log", f"{event.source}: onset {event.onset!r} outside {span}"
                )
            )
            continue
        nearest = _nearest(timestamps, event.onset)
        if abs(timestamps[nearest] - event.onset) > tolerance_s:
            unmatched.append(
                QuarantinedRow(
                    source,
                    0,
                    0,
                    "event_no_sample",
                    f"{event.source}: no sample within tolerance_s={tolerance_s:g} of onset {event.onset!r} "
                    f"(nearest {timestamps[nearest] - event.onset:+.3g} s)",
                )
            )
            continue
        used.append((event, nearest))
    mode = np.full(n, HEALTHY, dtype=object)
    component = np.full(n, "", dtype=object)
    health = np.ones(n)
    failure = np.zeros(n, dtype=bool)
    excluded = np.zeros(n, dtype=bool)
    rul = np.full(n, np.inf)
    onsets = np.array([timestamps[index] for _, index in used])
    if len(onsets):
        following = np.searchsorted(onsets, timestamps, side="left")
        has_next = following < len(onsets)
        rul[has_next] = onsets[following[has_next]] - timestamps[has_next]
        soon = has_next & (rul <= horizon_s)
        for k, (event, index) in enumerate(used):
            near = soon & (following == k)
            mode[near] = event.mode
            component[near] = event.component
            health[near] = 0.0
            failure[index] = True
            end = event.end if event.end is not None else event.onset
            excluded |= (timestamps >= timestamps[index]) & (timestamps <= end)
    truth = Truth(
        mode=mode.astype(np.str_),
        component=component.astype(np.str_),
        health=health,
        failure=failure,
        rul_s=rul,
        excluded=excluded,
    )
    return truth, unmatched


def _nearest(timestamps: FloatArray, moment: float) -> int:
    position = int(np.clip(np.searchsorted(timestamps, moment), 0, len(timestamps) - 1))
    before = max(position - 1, 0)
    return before if abs(timestamps[before] - moment) < abs(timestamps[position] - moment) else position
