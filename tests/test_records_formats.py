"""Records as controllers write them: RFC 4180 quoting, separators, booleans, exact names, time formats.

Every case goes through the one parser both halves share (agent.contract.records); the last
tests read a realistic cobot export end to end with the agent daemon and `robotpm-train inspect`,
from one config file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from agent.config import IngestConfig, PolicyConfig, load_agent_config
from agent.contract.errors import ConfigError, RecordError
from agent.contract.records import RecordParser, RecordSchema, epoch_seconds, parse_timestamp
from agent.contract.timerule import StreamClock, TimeRule
from agent.daemon import AgentDaemon
from agent.testing import InMemoryTransport, ManualClock
from tests.agent_config import tiny_agent
from tests.models import write_linear_model
from tests.ticking import judge_and_stop
from trainer import cli as trainer_cli

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2022, 3, 1, 10, 0, 0, tzinfo=timezone.utc).timestamp()


def _parser(header: str, channels: dict[str, str], **reading: Any) -> RecordParser:
    parser = RecordParser(RecordSchema(format="csv", timestamp_field="ts", channels=channels, **reading))
    parser.set_header(header)
    return parser


def _parse(parser: RecordParser, text: str) -> tuple[list[float], list[list[float]], list[str]]:
    result = parser.parse(text.encode())
    return (
        result.batch.timestamps.tolist(),
        result.batch.values.tolist(),
        [f"{r.reason}:{r.detail}" for r in result.rejected],
    )


def test_quoted_cells_doubled_quotes_and_triple_quoted_times_are_read_per_rfc_4180() -> None:
    """Quoted numbers, a quoted text cell holding the delimiter and quotes, and '\"\"\"…Z\"\"\"' times."""
    parser = _parser('"ts","A","note"', {"A": "a"})
    text = (
        '"2022-03-01T10:00:00Z","1.5","pick, ""fast"""\n'
        '"""2022-03-01T10:00:01Z""",2.5,plain\n'
        '2022-03-01T10:00:02Z,"3",""\n'
    )
    ts, values, refused = _parse(parser, text)
    assert refused == []
    assert ts == [T0, T0 + 1, T0 + 2]
    assert values == [[1.5], [2.5], [3.0]]


def test_a_broken_quote_is_refused_with_its_own_reason_and_the_neighbours_are_kept() -> None:
    """An unbalanced quote refuses that line only, as bad_quoting."""
    parser = _parser("ts,A", {"A": "a"})
    ts, _, refused = _parse(parser, '1,"2\n2,"3"x\n3,4\n')
    assert ts == [3.0]
    assert [r.split(":")[0] for r in refused] == ["bad_quoting", "bad_quoting"]


@pytest.mark.parametrize("quoted", [False, True], ids=["plain-fast-path", "quoted-line-path"])
def test_semicolon_delimiter_and_decimal_comma_come_from_the_schema(quoted: bool) -> None:
    """'1,5' with decimal ',' and delimiter ';' is 1.5, on the vectorised path and the line path alike."""
    parser = _parser("ts;A;B", {"A": "a", "B": "b"}, delimiter=";", decimal=",")
    q = '"' if quoted else ""
    text = "".join(f"{i};{q}{i},5{q};-0,25\n" for i in range(1, 4))
    ts, values, refused = _parse(parser, text)
    assert refused == []
    assert ts == [1.0, 2.0, 3.0]
    assert values == [[1.5, -0.25], [2.5, -0.25], [3.5, -0.25]]


def test_boolean_and_zero_one_flag_columns_are_channels_in_csv_and_json() -> None:
    """true/false in any case are 1/0, and 0/1 flags are numbers: no row is refused as not_numeric."""
    parser = _parser("ts,grip_lost,stop,door", {"grip_lost": "grip", "stop": "stop", "door": "door"})
    _, values, refused = _parse(parser, "1,False,0,true\n2,True,1,FALSE\n")
    assert refused == []
    assert values == [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    jsonl = RecordParser(
        RecordSchema(format="jsonl", timestamp_field="ts", channels={"grip_lost": "grip", "stop": "stop"})
    )
    result = jsonl.parse(
        b'{"ts": 1, "grip_lost": true, "stop": "False"}\n{"ts": 2, "grip_lost": false, "stop": 1}\n'
    )
    assert result.rejected == []
    assert result.batch.values.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_a_column_name_with_a_trailing_space_is_mapped_under_its_real_name() -> None:
    """'cycle ' maps exactly; 'A' still finds ' A ' (one trimmed match); two trimmed matches do not."""
    parser = _parser("ts,cycle , A ,cycle", {"cycle ": "cycle_count", "A": "a"})
    _, values, refused = _parse(parser, "1,7,0.5,99\n")
    assert refused == []
    assert values == [[7.0, 0.5]]
    with pytest.raises(RecordError, match="lacks"):
        _parser("ts,B ,B  ", {"B": "b"})


def test_text_columns_no_channel_reads_are_ignored_with_a_note_and_keep_the_fast_path() -> None:
    """A 'program' text column is not parsed: rows are kept, the vectorised path still reads the block."""
    parser = _parser("ts,A,program", {"A": "a"})
    text = "".join(f"{i},{i / 10},pick_place_{i}\n" for i in range(1, 50))
    assert parser._parse_csv_fast(text.encode(), 49) is not None  # the vectorised path, not line by line
    ts, values, refused = _parse(parser, text)
    assert refused == []
    assert len(ts) == 49
    assert values[-1] == [4.9]
    assert parser.notes == ["columns not mapped to a channel are ignored: ['program']"]


@pytest.mark.parametrize(
    ("unit", "number"),
    [("s", 1646128800.25), ("ms", 1646128800250), ("us", 1646128800250000), ("ns", 1646128800250000000)],
)
def test_epoch_numbers_in_each_unit_are_the_same_instant(unit: str, number: float) -> None:
    """The same instant written in s, ms, µs or ns: named, or told apart by magnitude (auto)."""
    expected = T0 + 0.25
    for given in (unit, "auto"):
        parser = _parser("ts,A", {"A": "a"}, timestamp_unit=given)
        ts, _, refused = _parse(parser, f"{number},1\n{number},2\n")  # plain lines: the vectorised path
        assert refused == []
        assert ts == pytest.approx([expected, expected], abs=1e-6)
        quoted, _, _ = _parse(parser, f'"{number}",1\n')  # quoted: the line path
        assert quoted == pytest.approx([expected], abs=1e-6)
    assert epoch_seconds(1646128800250, "auto") == pytest.approx(expected)


def test_iso_times_with_a_zone_are_absolute_and_without_one_are_in_the_configured_zone() -> None:
    """'Z' and '+01:00' say their zone; a zone-less time is UTC by default, or the schema's timezone."""
    assert parse_timestamp("2022-03-01T10:00:00Z") == T0
    assert parse_timestamp("2022-03-01T11:00:00+01:00") == T0
    assert parse_timestamp("2022-03-01 10:00:00") == T0
    assert parse_timestamp("2022-03-01T11:00:00", zone=ZoneInfo("Europe/Berlin")) == T0
    parser = _parser("ts,A", {"A": "a"}, timezone="Europe/Berlin")
    ts, _, _ = _parse(parser, "2022-03-01T11:00:00,1\n2022-07-01T12:00:00,1\n2022-07-01T10:00:00Z,1\n")
    summer = datetime(2022, 7, 1, 10, 0, 0, tzinfo=timezone.utc).timestamp()
    assert ts == [T0, summer, summer]  # CET in March, CEST in July


def test_a_controller_reboot_starts_a_new_uptime_epoch_and_nothing_after_it_is_refused() -> None:
    """Uptime 100..104 s, a reboot, uptime 2..6 s: the second epoch follows the first, nothing refused."""
    parser = RecordParser(
        RecordSchema(
            format="csv",
            timestamp_field="up",
            channels={"A": "a"},
            timestamp_unit="ms",
            timestamp_kind="uptime",
        )
    )
    parser.set_header("up,A")
    clock = StreamClock(TimeRule(backwards_tolerance_s=1.0, uptime=True))
    before = "".join(f"{100_000 + 1000 * i},1\n" for i in range(5))
    after = "".join(f"{2_000 + 1000 * i},1\n" for i in range(5))
    first = parser.parse(before.encode(), clock=clock)
    second = parser.parse(after.encode(), clock=clock)
    restored = StreamClock(TimeRule(backwards_tolerance_s=1.0, uptime=True))
    restored.restore(json.loads(json.dumps(clock.state())))
    third = parser.parse(b"7000,1\n", clock=restored)  # the same epoch after a restart
    assert first.rejected == second.rejected == third.rejected == []
    times = (
        first.batch.timestamps.tolist() + second.batch.timestamps.tolist() + third.batch.timestamps.tolist()
    )
    assert times == [100.0, 101.0, 102.0, 103.0, 104.0, 106.0, 107.0, 108.0, 109.0, 110.0, 111.0]
    assert np.all(np.diff(times) > 0)


# -- configuration ----------------------------------------------------------------------------------

STREAM_TABLE = (
    '[[agent.streams]]\nname = "arm1"\ndirectory = "logs"\n{extra}\n[agent.streams.channels]\nA = "a"\n'
)
AGENT_HEAD = '[agent]\nrobot_id = "r1"\nstate_dir = "state"\n[agent.model]\ndirectory = "models"\n'


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('delimiter = ";"\ndecimal = ","\nquote = ";"', "agent.streams.0.quote"),
        ('delimiter = ","\ndecimal = ","', "agent.streams.0.decimal"),
        ('timezone = "Mars/Olympus"', "agent.streams.0.timezone"),
        ('timestamp_unit = "fortnights"', "agent.streams.0.timestamp_unit"),
        ('timestamp_unit = "auto"\ntimestamp_kind = "uptime"', "agent.streams.0.timestamp_kind"),
    ],
)
def test_a_reading_setting_that_cannot_work_is_refused_naming_its_key(
    tmp_path: Path, extra: str, key: str
) -> None:
    """A quote or decimal equal to the delimiter, an unknown zone or unit, uptime by magnitude: named."""
    path = tmp_path / "config.toml"
    path.write_text(AGENT_HEAD + STREAM_TABLE.format(extra=extra))
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, environ={})
    assert info.value.key == key


def test_check_exits_2_naming_a_bad_reading_key(tmp_path: Path) -> None:
    """robotpm-agent check exits 2 and names the stream key, without a traceback."""
    path = tmp_path / "config.toml"
    path.write_text(AGENT_HEAD + STREAM_TABLE.format(extra='timezone = "Mars/Olympus"'))
    command = [sys.executable, "-m", "agent.cli", "check", "--config", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 2
    assert "agent.streams.0.timezone" in result.stderr
    assert "Traceback" not in result.stderr


# -- a realistic cobot export, end to end ---------------------------------------------------------

COBOT_CONFIG = """
[agent]
robot_id = "cobot-1"
state_dir = "state"
heartbeat_interval_s = 3600
[agent.model]
directory = "store"
bundled = "bundled"
[agent.ingest]
watch = "poll"
poll_interval_s = 0.01
[agent.policy]
on_delay_windows = 1
off_delay_windows = 1
[[agent.streams]]
name = "cobot"
directory = "logs/cobot-1"
patterns = ["*.csv"]
timestamp_field = "time"
timezone = "Europe/Berlin"
[agent.streams.channels]
"joint1 current" = "j1_current"
"joint1 temp" = "j1_temp"
grip_lost = "grip_lost"
"cycle " = "cycle"

[trainer]
stream = "cobot"
model_name = "cobot"
[trainer.features]
window = 20
hop = 10
[trainer.labels]
source = "flag"
horizon_s = 30.0
tolerance_s = 2.0
flag = { column = "protective_stop", on = ["True"], min_gap_s = 10.0, failure_mode = "stop", component = "a" }
"""


def _cobot_export(path: Path, rows: int = 240) -> list[float]:
    """A cobot's CSV export; returns the rows' UTC epoch times.

    About 1 s with jitter, quoted and triple-quoted ISO times (some zone-less, in Berlin time),
    boolean flags, a 'cycle ' column, a text column with a quoted comma; the joint current
    rises over the last 40 rows.
    """
    rng = np.random.default_rng(3)
    times = T0 + np.cumsum(1.0 + rng.uniform(-0.05, 0.05, rows))
    lines = ['"time","joint1 current","joint1 temp","grip_lost","protective_stop","cycle ","program"']
    for i, t in enumerate(times.tolist()):
        moment = datetime.fromtimestamp(round(t, 3), tz=timezone.utc)
        iso = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        stamp = [
            iso,
            f'"{iso}"',
            f'"""{iso}"""',
            moment.astimezone(ZoneInfo("Europe/Berlin"))
            .replace(tzinfo=None)
            .isoformat(timespec="milliseconds"),
        ][i % 4]
        current = 2.0 if i >= rows - 40 else 0.2 + 0.01 * (i % 5)
        stop = "True" if i in (100, 101, 102) else "False"
        grip = "True" if i % 50 == 7 else "False"
        lines.append(f'{stamp},"{current:.2f}",41.5,{grip},{stop},{i // 10},"pick, place"')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return [round(t, 3) for t in times.tolist()]


def test_a_cobot_export_is_read_whole_by_the_agent_and_alerts_on_its_real_times(tmp_path: Path) -> None:
    """Every row accepted (nothing quarantined); the over-current raises an alert dated by the export."""
    config_path = tmp_path / "config.toml"
    config_path.write_text(COBOT_CONFIG)
    write_linear_model(tmp_path / "bundled")
    times = _cobot_export(tmp_path / "logs" / "cobot-1" / "export.csv")
    config = load_agent_config(config_path, environ={})
    transport, clock = InMemoryTransport(), ManualClock()
    daemon = AgentDaemon(config, transport=transport, clock=clock)
    daemon.startup()
    counters, raised = judge_and_stop(daemon, transport, clock, len(times))
    assert counters.by_reason == {}
    assert counters.lines == len(times)
    first = next(e for e in raised if e["state"] == "raised")
    assert first["window"]["end"] in [pytest.approx(t, abs=1e-6) for t in times[-40:]]


def test_robotpm_train_inspect_reads_the_same_cobot_export_with_the_same_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inspect sees every row at about 1 Hz, the stop-flag event, no quarantine; it notes the text column."""
    config_path = tmp_path / "config.toml"
    config_path.write_text(COBOT_CONFIG)
    _cobot_export(tmp_path / "logs" / "cobot-1" / "export.csv")
    assert trainer_cli.main(["inspect", str(tmp_path / "logs"), "--config", str(config_path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"robot cobot-1: 240 rows over 239 s, (0\.99\d|1\.00?) Hz observed", text), text
    assert "failure events per mode: stop 1" in text
    assert "quarantine by reason: none" in text
    assert (
        "note: export.csv: columns not mapped to a channel are ignored: ['protective_stop', 'program']"
        in text
    )


def test_the_new_refusals_keep_their_raw_line_byte_exact() -> None:
    """bad_quoting and time_outlier lines carry the line itself, as every other refusal does."""
    parser = _parser("ts,A", {"A": "a"})
    quoting, outlier = b'1646128801,"2', b"32503680000.0,3"
    data = b"1646128800,1\n" + quoting + b"\n" + outlier + b"\r\n1646128802,4\n"
    result = parser.parse(data, base_offset=50, clock=StreamClock(TimeRule()))
    assert [(r.reason, r.raw, r.offset, r.length) for r in result.rejected] == [
        ("bad_quoting", quoting, 50 + 13, len(quoting)),
        ("time_outlier", outlier, 50 + 13 + len(quoting) + 1, len(outlier)),
    ]


def test_an_uptime_stream_goes_on_alerting_after_a_controller_reboot(tmp_path: Path) -> None:
    """The daemon on an uptime log (ms): quiet lines, a reboot (uptime back to 1 s), an over-current."""
    write_linear_model(tmp_path / "bundled")
    config = tiny_agent(
        tmp_path,
        stream_options={"timestamp_kind": "uptime", "timestamp_unit": "ms"},
        ingest=IngestConfig(watch="poll", poll_interval_s=0.01),
        policy=PolicyConfig(on_delay_windows=1, off_delay_windows=1),
        heartbeat_interval_s=3600,
    )
    quiet = "".join(f"{50_000 + 1000 * i},0.1,40.0\n" for i in range(12))
    hot = "".join(f"{1000 + 1000 * i},2.0,40.0\n" for i in range(10))
    (tmp_path / "logs" / "arm1.csv").write_text("ts,J1,T1\n" + quiet + hot)
    transport, clock = InMemoryTransport(), ManualClock()
    daemon = AgentDaemon(config, transport=transport, clock=clock)
    daemon.startup()
    counters, raised = judge_and_stop(daemon, transport, clock, 22)
    assert counters.by_reason == {}
    assert counters.lines == 22
    assert raised
    assert raised[0]["state"] == "raised"
    assert raised[0]["window"]["end"] > 61.0  # after the first epoch's last time (61 s): a new epoch
