"""Bad lines never stop ingestion: each lands in the quarantine file with its reason, file and offset."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import IngestConfig
from agent.contract.records import RecordParser, RejectedLine
from agent.contract.streams import StreamConfig
from agent.ingest import Quarantine, StreamFollower

HEADER = b"ts,J1,T1"


def stream(directory: Path) -> StreamConfig:
    return StreamConfig(
        name="arm1",
        directory=directory,
        patterns=("arm1.csv",),
        timestamp_field="ts",
        channels={"J1": "j1_current", "T1": "j1_temp"},
        limits={"j1_temp": (-50.0, 150.0)},
    )


CORPUS: list[tuple[bytes, str | None]] = [
    (b"1.0,0.5,40.0", None),
    (b"2.0,0.5,40.0,7", "field_count"),
    (b"3.0,0.5", "field_count"),
    (b"4.0,abc,40.0", "not_numeric"),
    (b"5.0,\xff\xfe,40.0", "not_utf8"),
    (b"6.0,0.5,4\x000", "binary"),
    (b"7.0,nan,40.0", "not_finite"),
    (b"8.0,0.5,inf", "not_finite"),
    (b"9.0,0.5,999.0", "out_of_range"),
    (b"10.0,0.5,40.0", None),
    (b"2.0,0.5,40.0", "time_backwards"),
    (b"", "empty"),
    (b"yesterday,0.5,40.0", "bad_timestamp"),
    (b"ts,J1,T1", "header"),
    (b"11.0," + b"7" * 300 + b",40.0", "too_long"),
    (b"12.0,0.6,41.0\r", None),
    (b"2026-11-26T12:00:13Z,0.6,41.0", None),
]


def ingest(
    directory: Path, quarantine: Quarantine, max_line: int = 256
) -> tuple[list[float], dict[str, int]]:
    """Follow the stream once, parse like the pipeline, quarantine every refusal; return good timestamps."""
    follower = StreamFollower(
        stream(directory), IngestConfig(watch="poll", max_line_bytes=max_line), threading.Event()
    )
    follower.restore(None)
    parsers: dict[str, RecordParser] = {}
    good: list[float] = []
    last_ts: float | None = None
    try:
        while blocks := follower.read(1 << 20):
            for block in blocks:
                rejected: list[RejectedLine] = list(block.rejected)
                if block.data:
                    parser = parsers.get(block.file_key)
                    if parser is None:
                        parser = parsers[block.file_key] = RecordParser(stream(directory).record_schema())
                        assert block.header is not None
                        parser.set_header(block.header)
                    result = parser.parse(block.data, block.offset, last_ts, 1.0)
                    rejected.extend(result.rejected)
                    if len(result.batch):
                        good.extend(result.batch.timestamps.tolist())
                        last_ts = max(good)
                quarantine.write("arm1", block.path, rejected)
    finally:
        follower.close()
    return good, dict(quarantine.counts)


def quarantined(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_each_bad_line_of_the_corpus_is_quarantined_with_its_reason(tmp_path: Path) -> None:
    """Every refused line is in the quarantine once, with its reason, file, byte offset and raw bytes."""
    logs = tmp_path / "logs"
    logs.mkdir()
    content = HEADER + b"\n" + b"".join(line + b"\n" for line, _ in CORPUS)
    log = logs / "arm1.csv"
    log.write_bytes(content)
    q = Quarantine(tmp_path / "state" / "quarantine.jsonl", 1 << 20)
    good, counts = ingest(logs, q)
    iso = datetime(2026, 11, 26, 12, 0, 13, tzinfo=timezone.utc).timestamp()
    assert good == [1.0, 10.0, 12.0, iso]
    records = quarantined(q.path)
    expected = [(line, reason) for line, reason in CORPUS if reason is not None]
    assert [r["reason"] for r in records] == [reason for _, reason in expected]
    for record, (line, _) in zip(records, expected, strict=True):
        assert record["file"] == str(log)
        assert record["stream"] == "arm1"
        start = record["offset"]
        assert content[start : start + record["length"]] == line.rstrip(b"\r")
        assert content[start - 1 : start] == b"\n"
        # every reason keeps the line itself (its first 256 bytes), byte-exact
        assert record["raw"] == line.rstrip(b"\r")[:256].decode("utf-8", "backslashreplace"), record["reason"]
    assert sum(counts.values()) == len(expected)
    assert records[3]["raw"] == "5.0,\\xff\\xfe,40.0"  # undecodable bytes escaped, not lost


def test_reading_goes_on_after_every_kind_of_bad_line(tmp_path: Path) -> None:
    """Good lines after the corpus are still read: garbage never stops the follower."""
    logs = tmp_path / "logs"
    logs.mkdir()
    tail = b"".join(f"{2e9 + i},0.5,40.0\n".encode() for i in range(50))
    (logs / "arm1.csv").write_bytes(HEADER + b"\n" + b"".join(line + b"\n" for line, _ in CORPUS) + tail)
    q = Quarantine(tmp_path / "q.jsonl", 1 << 20)
    good, _ = ingest(logs, q)
    assert good[-50:] == [2e9 + i for i in range(50)]


def test_quarantine_file_is_bounded_and_counts_survive_rotation(tmp_path: Path) -> None:
    """Past max_bytes the file moves to .1 and a new one starts; counters keep counting."""
    q = Quarantine(tmp_path / "q.jsonl", 2048)
    bad = [RejectedLine(i * 10, 9, "not_numeric", "x", b"1.0,abc,2") for i in range(10)]
    for _ in range(20):  # a source of fixed length: each record names it, and tmp_path's length varies
        q.write("arm1", "/var/log/robot/arm1.csv", bad)
    assert q.counts["not_numeric"] == 200
    assert q.path.stat().st_size <= 2048
    assert (tmp_path / "q.jsonl.1").stat().st_size <= 2048
    assert q.write_failed == 0


def test_unwritable_quarantine_counts_instead_of_raising(tmp_path: Path) -> None:
    """A quarantine that cannot be written (its directory is a file) counts the loss and goes on."""
    (tmp_path / "blocker").write_text("")
    q = Quarantine(tmp_path / "blocker" / "q.jsonl", 4096)
    q.write("arm1", tmp_path / "arm1.csv", [RejectedLine(0, 3, "binary", "", b"\x00\x01\x02")])
    assert q.write_failed == 1
    assert q.counts["binary"] == 1


junk_line = st.one_of(
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"")),
    st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=6)),
        min_size=1,
        max_size=5,
    ).map(lambda parts: ",".join(parts).replace("\n", "").encode("utf-8", "surrogatepass")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.lists(st.tuples(st.booleans(), junk_line), max_size=40))
def test_fuzzed_lines_are_each_either_a_record_or_quarantined_once(
    tmp_path_factory: Any, body: list[tuple[bool, bytes]]
) -> None:
    """Random garbage mixed with good lines: every line is accounted for, exactly once, nothing raises."""
    root = tmp_path_factory.mktemp("fuzz")
    logs = root / "logs"
    logs.mkdir()
    lines = []
    for i, (good, junk) in enumerate(body):
        lines.append(f"{1000 + i}.0,0.5,40.0".encode() if good else junk)
    content = HEADER + b"\n" + b"".join(line + b"\n" for line in lines)
    (logs / "arm1.csv").write_bytes(content)
    q = Quarantine(root / "q.jsonl", 1 << 22)
    good_ts, counts = ingest(logs, q, max_line=64)
    records = quarantined(q.path) if q.path.exists() else []
    assert len(good_ts) + len(records) == len(lines)
    offsets = [r["offset"] for r in records]
    assert len(set(offsets)) == len(offsets)
    # a line starts after a newline, or after NULs the follower skipped (a stale writer's hole)
    assert all(content[o - 1 : o] in (b"\n", b"\x00") for o in offsets)
    assert sum(counts.values()) == len(records)
    by_offset = {r["offset"]: r["reason"] for r in records}
    offset = len(HEADER) + 1
    for i, (good, _) in enumerate(body):
        if good:  # a good line is read, unless junk that parsed with a later timestamp came first
            assert 1000.0 + i in good_ts or by_offset.get(offset) == "time_backwards"
        offset += len(lines[i]) + 1
