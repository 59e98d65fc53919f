"""Time is data, not authority: an outlier timestamp is quarantined without moving the stream's clock.

One line dated year 3000 (or 1970) among good lines is refused as ``time_outlier``; the lines
after it are read, alerts keep coming, and a restart does not bring the bad time back. A
genuine clock step (N consecutive lines that agree) re-bases the clock (agent.contract.timerule).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import IngestConfig, PolicyConfig, load_agent_config
from agent.contract.errors import ConfigError
from agent.contract.records import RecordParser, RecordSchema
from agent.contract.timerule import StreamClock, TimeRule
from agent.daemon import AgentDaemon
from agent.testing import InMemoryTransport, ManualClock
from tests.agent_config import tiny_agent
from tests.models import write_linear_model
from tests.ticking import judge_and_stop, tick_until_judged
from trainer.stages.extraction import parse_log_bytes

START = 1_767_225_600.0  # 2026-01-01
YEAR_3000 = 32_503_680_000.0
YEAR_1970 = 86_400.0
SCHEMA = RecordSchema(format="csv", timestamp_field="ts", channels={"J1": "j1_current", "T1": "j1_temp"})
RULE = TimeRule(backwards_tolerance_s=1.0, jump_s=86_400.0, rebase_lines=5)


def _line(ts: float, current: float = 0.1) -> str:
    return f"{ts!r},{current},40.0\n"


def _parse(lines: list[str], clock: StreamClock) -> tuple[list[float], list[tuple[int, str]]]:
    """Parse `lines` as one block with `clock`; the accepted times and (line index, reason) refused."""
    parser = RecordParser(SCHEMA)
    parser.set_header("ts,J1,T1")
    data = "".join(lines).encode()
    result = parser.parse(data, clock=clock)
    starts = np.cumsum([0] + [len(x) for x in lines])[:-1].tolist()
    return result.batch.timestamps.tolist(), [(starts.index(r.offset), r.reason) for r in result.rejected]


@pytest.mark.parametrize("outlier", [YEAR_3000, YEAR_1970], ids=["year-3000", "year-1970"])
def test_an_outlier_time_is_refused_and_the_clock_stays_where_it_was(outlier: float) -> None:
    """The outlier alone is refused as time_outlier; the good lines around it are all accepted."""
    times = [START + i for i in range(20)]
    lines = [_line(t) for t in times[:8]] + [_line(outlier)] + [_line(t) for t in times[8:]]
    clock = StreamClock(RULE)
    accepted, refused = _parse(lines, clock)
    assert accepted == times
    assert refused == [(8, "time_outlier")]
    assert clock.newest == times[-1]


def test_a_genuine_clock_step_is_followed_after_the_configured_number_of_lines() -> None:
    """A clock reset (2026 → 1970 + 1 day, then on) costs rebase_lines - 1 lines, then the stream goes on."""
    before = [START + i for i in range(10)]
    after = [YEAR_1970 + i for i in range(12)]
    clock = StreamClock(RULE)
    accepted, refused = _parse([_line(t) for t in before + after], clock)
    assert refused == [(10 + i, "time_outlier") for i in range(RULE.rebase_lines - 1)]
    assert accepted == before + after[RULE.rebase_lines - 1 :]
    assert clock.newest == after[-1]


def test_outliers_that_disagree_with_each_other_never_re_base_the_clock() -> None:
    """Every other line a wild time (a broken field): each is refused, none moves the clock."""
    lines = []
    for i in range(12):
        lines += [_line(START + i), _line(YEAR_3000 * (1 + i % 2) + i * 1e6)]
    clock = StreamClock(RULE)
    accepted, refused = _parse(lines, clock)
    assert accepted == [START + i for i in range(12)]
    assert [reason for _, reason in refused] == ["time_outlier"] * 12


def test_a_small_step_back_is_still_time_backwards_and_never_re_bases() -> None:
    """Lines an hour back (a re-read, a small correction) stay time_backwards however many there are."""
    lines = [_line(START + 7200 + i) for i in range(3)] + [_line(START + i) for i in range(10)]
    accepted, refused = _parse(lines, StreamClock(RULE))
    assert accepted == [START + 7200 + i for i in range(3)]
    assert {reason for _, reason in refused} == {"time_backwards"}


def test_the_clock_survives_a_save_and_restore_half_way_through_a_re_base() -> None:
    """Pending re-base lines are part of the saved state: a restart neither forgets nor repeats them."""
    steps = [YEAR_1970 + i for i in range(6)]
    whole = StreamClock(RULE)
    whole.newest = START
    one = _parse([_line(t) for t in steps], whole)
    first = StreamClock(RULE)
    first.newest = START
    head = _parse([_line(t) for t in steps[:3]], first)
    second = StreamClock(RULE)
    second.restore(json.loads(json.dumps(first.state())))
    tail = _parse([_line(t) for t in steps[3:]], second)
    assert one[0] == head[0] + tail[0]
    assert second.newest == whole.newest


@settings(max_examples=80, deadline=None)
@given(
    steps=st.lists(st.floats(0.0, 30.0), min_size=2, max_size=40),
    where=st.integers(0, 39),
    away=st.floats(86_401.0, 1e12),
    sign=st.sampled_from([-1.0, 1.0]),
    cut=st.integers(1, 40),
)
def test_one_outlier_anywhere_costs_exactly_itself_in_any_block_split(
    steps: list[float], where: int, away: float, sign: float, cut: int
) -> None:
    """Good times with one outlier inserted anywhere, parsed in two blocks: only the outlier is refused."""
    times = (START + np.cumsum(steps)).tolist()
    where = min(where, len(times))
    anchor = times[where - 1] if where else times[0]
    lines = [_line(t) for t in times]
    lines.insert(where, _line(anchor + sign * away))
    clock = StreamClock(RULE, newest=START)  # a stream under way (its very first line sets the clock)
    cut = min(cut, len(lines))
    head = _parse(lines[:cut], clock)
    tail = _parse(lines[cut:], clock) if cut < len(lines) else ([], [])
    assert head[0] + tail[0] == times
    assert len(head[1]) + len(tail[1]) == 1
    assert clock.newest == times[-1]


def test_the_trainer_reads_a_log_with_an_outlier_by_the_same_rule(tmp_path: Path) -> None:
    """Trainer extraction refuses the year-3000 row as time_outlier and keeps every row after it."""
    times = [START + i for i in range(30)]
    body = [_line(t) for t in times[:5]] + [_line(YEAR_3000)] + [_line(t) for t in times[5:]]
    ts, _, rejected, _ = parse_log_bytes(("ts,J1,T1\n" + "".join(body)).encode(), SCHEMA, "arm1.csv")
    assert ts.tolist() == times
    assert [(r.line, r.reason) for r in rejected] == [(7, "time_outlier")]


# -- the real daemon --------------------------------------------------------------------------------


def _start(root: Path) -> tuple[AgentDaemon, InMemoryTransport, ManualClock]:
    config = tiny_agent(
        root,
        ingest=IngestConfig(watch="poll", poll_interval_s=0.01),
        policy=PolicyConfig(on_delay_windows=1, off_delay_windows=1),
        heartbeat_interval_s=3600,
    )
    transport, clock = InMemoryTransport(), ManualClock()
    daemon = AgentDaemon(config, transport=transport, clock=clock)
    daemon.startup()
    return daemon, transport, clock


@pytest.mark.parametrize("outlier", [YEAR_3000, YEAR_1970], ids=["year-3000", "year-1970"])
def test_after_an_outlier_line_and_a_restart_the_daemon_still_raises_alerts(
    tmp_path: Path, outlier: float
) -> None:
    """Quiet lines, one outlier, quiet lines, a restart, then an over-current: the alert is raised."""
    write_linear_model(tmp_path / "bundled")
    log = tmp_path / "logs" / "arm1.csv"
    tmp_path.joinpath("logs").mkdir()
    quiet = [_line(START + i) for i in range(12)]
    log.write_text("ts,J1,T1\n" + "".join(quiet[:6]) + _line(outlier) + "".join(quiet[6:]))
    first, first_sent, clock = _start(tmp_path)
    tick_until_judged(first, clock, 13)
    assert first.streams[0].counters.by_reason == {"time_outlier": 1}
    first.shutdown()
    assert not first_sent.messages("alert")
    with log.open("a") as handle:
        handle.write("".join(_line(START + 12 + i, current=2.0) for i in range(10)))
    second, second_sent, clock = _start(tmp_path)
    counters, raised = judge_and_stop(second, second_sent, clock, 10)
    assert counters.by_reason == {}
    assert counters.lines == 10
    assert [(e["state"], e["severity"]) for e in raised][:1] == [("raised", "critical")]


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ingest", "key"),
    [
        ("time_rebase_lines = 1", "agent.ingest.time_rebase_lines"),
        ("time_jump_s = 0.5", "agent.ingest.time_jump_s"),
        ("time_jump_s = -1", "agent.ingest.time_jump_s"),
    ],
)
def test_a_bad_time_rule_setting_is_refused_naming_its_key(tmp_path: Path, ingest: str, key: str) -> None:
    """A re-base of one line, or a jump bound inside the backwards tolerance, names the key."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[agent]\nrobot_id = "r1"\nstate_dir = "state"\n[agent.model]\ndirectory = "models"\n'
        f"[agent.ingest]\n{ingest}\n"
        '[[agent.streams]]\nname = "arm1"\ndirectory = "logs"\n[agent.streams.channels]\nA = "a"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, environ={})
    assert info.value.key == key
