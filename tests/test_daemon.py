"""The daemon end to end without a broker: log lines in, alert events out of the in-memory transport."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, IngestConfig, ModelConfig, PolicyConfig
from tests.agent_config import tiny_agent
from tests.daemon_harness import HEADER, Harness, harness_fixture, write  # noqa: F401 (pytest fixture: harness)
from tests.models import write_linear_model


def make_config(tmp_path: Path, **ingest: object) -> AgentConfig:
    write_linear_model(tmp_path / "bundled", version=1)
    return tiny_agent(
        tmp_path,
        site="lab",
        model=ModelConfig(
            directory=tmp_path / "store",
            bundled=tmp_path / "bundled",
            check_interval_s=0.01,
            probation_windows=0,  # these tests expect the swap at once; tests/test_model_probation.py
        ),
        ingest=IngestConfig(watch="poll", poll_interval_s=0.01, **ingest),  # type: ignore[arg-type]
        policy=PolicyConfig(on_delay_windows=2, off_delay_windows=2),
        heartbeat_interval_s=3600,
    )


def lines(start: int, currents: list[float]) -> str:
    return "".join(f"{start + i}.0,{c},40.0\n" for i, c in enumerate(currents))


# healthy, then a fault (current 1.0 → score 1.0 > critical 0.8), then healthy again
PROFILE = [0.1] * 12 + [1.0] * 12 + [0.1] * 16


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> AgentConfig:
    return make_config(tmp_path)


class TestAlertsFromLogLines:
    def test_a_fault_in_the_log_raises_then_clears_one_alert(self, harness: Harness) -> None:
        """A stretch of high current raises one alert (critical) and clears it once current is back down."""
        harness.feed(lines(0, PROFILE))
        alerts = harness.alerts()
        states = [a["state"] for a in alerts]
        assert "raised" == states[0]
        assert "cleared" == states[-1]
        assert 1 == states.count("raised")
        assert {a["alert_id"] for a in alerts} == {alerts[0]["event_id"]}
        assert ("joint1", "overcurrent") == (alerts[0]["component"], alerts[0]["failure_mode"])

    def test_an_alert_names_its_window_source_and_model(self, harness: Harness, config: AgentConfig) -> None:
        """The raise points at the log file, byte range and window, and names the model version."""
        harness.feed(lines(0, PROFILE))
        raised = harness.alerts()[0]
        window = raised["window"]
        assert isinstance(window, dict)
        assert str(config.streams[0].directory / "arm1.csv") == window["source_file"]
        assert window["byte_start"] < window["byte_end"]
        assert {"id": "test-linear", "version": 1} == raised["model"]
        assert raised["top_features"], "every alert explains itself"

    def test_bad_lines_are_quarantined_and_the_stream_goes_on(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """Garbage between good lines lands in quarantine with its reason; alerts still come."""
        good = lines(0, PROFILE).splitlines(keepends=True)
        text = "".join(good[:10]) + "oops,not,numbers\n" + "5,\x00\x00,1\n" + "".join(good[10:])
        harness.feed(text)
        quarantined = [
            json.loads(x) for x in (config.state_dir / "quarantine.jsonl").read_text().splitlines()
        ]
        assert 2 == len(quarantined)
        assert {"bad_timestamp", "binary"} == {q["reason"] for q in quarantined}
        assert "raised" in [a["state"] for a in harness.alerts()]


class TestRestarts:
    def test_a_restart_mid_stream_yields_exactly_the_ids_of_an_uninterrupted_run(
        self, tmp_path: Path
    ) -> None:
        """Stopping after half the lines and restarting gives the same alert ids as one uninterrupted run."""
        one = make_config(tmp_path / "one")
        write(one, lines(0, PROFILE))
        uninterrupted = Harness(one)
        uninterrupted.settle()
        expected = [a["event_id"] for a in uninterrupted.alerts()]
        uninterrupted.close()

        two = make_config(tmp_path / "two")
        two_lines = lines(0, PROFILE).splitlines(keepends=True)
        write(two, "".join(two_lines[:17]) + two_lines[17][:3])  # a partial line at the cut
        first = Harness(two)
        first.settle()
        got = [a["event_id"] for a in first.alerts()]
        first.close()
        write(two, two_lines[17][3:] + "".join(two_lines[18:]))
        second = Harness(two)
        second.settle()
        got += [a["event_id"] for a in second.alerts()]
        second.close()
        assert expected == got
        assert len(expected) >= 2

    def test_a_damaged_follower_state_restarts_the_stream_from_scratch(self, tmp_path: Path) -> None:
        """When the saved position is unusable, the open window is dropped too: lines count once."""
        config = make_config(tmp_path)
        write(config, lines(0, PROFILE))
        first = Harness(config)
        first.settle()
        first.close()
        db = sqlite3.connect(config.state_dir / "agent.db")
        with db:
            (raw,) = db.execute("SELECT state FROM stream_state WHERE stream = 'arm1'").fetchone()
            state = json.loads(raw)
            state["follower"]["v"] = 999
            db.execute("UPDATE stream_state SET state = ? WHERE stream = 'arm1'", (json.dumps(state),))
        db.close()
        with closing(Harness(config)) as second:
            second.settle()
            assert len(PROFILE) == second.daemon.streams[0].state()["samples_seen"]


def saved_state(config: AgentConfig) -> dict[str, Any]:
    db = sqlite3.connect(config.state_dir / "agent.db")
    try:
        (raw,) = db.execute("SELECT state FROM stream_state WHERE stream = 'arm1'").fetchone()
    finally:
        db.close()
    state: dict[str, Any] = json.loads(raw)
    return state


class TestHoldingLinesUntilAWindowCanComplete:
    """The linear test model has window 4, hop 2: fewer lines cannot cause an alert."""

    def test_lines_too_few_for_a_window_wait_and_the_line_completing_it_is_scored_in_its_tick(
        self, tmp_path: Path
    ) -> None:
        """Three lines are held unparsed; the fourth completes window 0 and all four count at once."""
        config = make_config(tmp_path, max_hold_s=60.0)
        with closing(Harness(config)) as harness:
            counters = harness.daemon.streams[0].counters
            write(config, lines(0, [0.1] * 3))
            harness.daemon.tick(0.01)
            assert (0, 0) == (counters.lines, counters.windows)
            write(config, lines(3, [0.1]))
            harness.daemon.tick(0.01)
            assert (4, 1) == (counters.lines, counters.windows)
            write(config, lines(4, [0.1]))  # one more line: window 1 needs two
            harness.daemon.tick(0.01)
            assert (4, 1) == (counters.lines, counters.windows)

    def test_holding_changes_nothing_in_the_alerts_raised(self, tmp_path: Path) -> None:
        """Lines arriving one per tick give identical alerts whether held and joined, or parsed at once."""
        payloads = []
        for max_hold in (0.0, 60.0):
            config = make_config(tmp_path / f"hold-{max_hold}", max_hold_s=max_hold)
            with closing(Harness(config)) as harness:
                text = lines(0, PROFILE).splitlines(keepends=True)
                for i, line in enumerate(text):
                    write(config, line if i % 3 else line + "bad line\n")
                    harness.daemon.tick(0.01)
            here = str(config.streams[0].directory)
            payloads.append(
                [m.payload.replace(here.encode(), b"<logs>") for m in harness.transport.messages("alert")]
            )
        assert payloads[0] == payloads[1]
        assert len(payloads[0]) >= 2

    def test_the_loop_sleeps_through_appends_that_cannot_complete_a_window_and_wakes_for_the_one_that_does(
        self, tmp_path: Path
    ) -> None:
        """inotify, a 30 s poll: single-line appends short of a window do not end the loop's wait;
        the append completing the window does, within the coalesce period.
        """
        config = make_config(tmp_path, max_hold_s=60.0).model_copy(
            update={
                "ingest": IngestConfig(
                    watch="inotify", poll_interval_s=30.0, coalesce_ms=5.0, max_hold_s=60.0
                )
            }
        )
        write(config, lines(0, [0.1] * 5))  # window 0 complete; the next needs 1 more line (hop 2)
        with closing(Harness(config)) as harness:
            counters = harness.daemon.streams[0].counters
            harness.daemon.tick(0.01)
            assert 1 == counters.windows
            write(config, lines(5, [0.1]))  # window 1 complete: wakes
            woke = time.monotonic()
            harness.daemon.tick(5.0)
            assert 2 == counters.windows
            assert time.monotonic() - woke < 1.0
            # window 2 needs two lines: one appended alone must not wake the loop
            threading.Timer(0.3, write, (config, lines(6, [0.1]))).start()
            threading.Timer(0.8, write, (config, lines(7, [0.1]))).start()
            started = time.monotonic()
            harness.daemon.tick(5.0)
            waited = time.monotonic() - started
            assert 3 == counters.windows
            assert 0.75 < waited < 1.8, f"woke after {waited:.2f} s"

    def test_held_lines_are_parsed_once_max_hold_s_has_passed(self, tmp_path: Path) -> None:
        """However slow the stream, its lines (and their quarantine) wait at most max_hold_s."""
        config = make_config(tmp_path, max_hold_s=0.5)
        with closing(Harness(config)) as harness:
            write(config, lines(0, [0.1] * 2) + "oops,1,2\n")
            harness.daemon.tick(0.01)
            assert 0 == harness.daemon.streams[0].counters.lines
            harness.clock.advance(0.6)
            harness.daemon.tick(0.01)
            assert (2, 1) == (
                harness.daemon.streams[0].counters.lines,
                harness.daemon.streams[0].counters.quarantined,
            )

    def test_a_commit_while_lines_are_held_saves_the_position_before_them(self, tmp_path: Path) -> None:
        """A heartbeat commits while lines wait: a crash then must read them again, not skip them."""
        config = make_config(tmp_path, max_hold_s=60.0).model_copy(update={"heartbeat_interval_s": 1.0})
        with closing(Harness(config)) as harness:
            write(config, lines(0, [0.1] * 4))
            harness.daemon.tick(0.01)  # window 0 complete
            harness.clock.advance(config.ingest.checkpoint_interval_s)
            harness.daemon.tick(0.01)  # checkpoint: committed with its position
            committed = saved_state(config)["follower"]["files"][0]["offset"]
            assert len(HEADER) + len(lines(0, [0.1] * 4)) == committed
            write(config, lines(4, [0.1]))
            harness.clock.advance(5.0)
            harness.daemon.tick(0.01)  # reads the line, holds it, and commits a heartbeat
            assert harness.transport.messages("heartbeat")
            assert committed == saved_state(config)["follower"]["files"][0]["offset"]
            assert 4 == saved_state(config)["pipeline"]["samples_seen"]
        after_stop = saved_state(config)
        assert 5 == after_stop["pipeline"]["samples_seen"], "a clean stop processes what was held"
        assert committed + len(lines(4, [0.1])) == after_stop["follower"]["files"][0]["offset"]


class TestModelSwap:
    def test_a_newer_model_in_the_store_is_swapped_in_without_restart(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """Version 2 written into the store scores the later alerts; the earlier ones keep version 1."""
        harness.feed(lines(0, PROFILE))
        write_linear_model(config.model.directory / "v2", version=2)
        harness.settle_until(lambda: harness.daemon.slot.current.manifest.version == 2)
        harness.feed(lines(100, PROFILE))
        versions = [a["model"]["version"] for a in harness.alerts()]  # type: ignore[index]
        assert 1 == versions[0]
        assert 2 == versions[-1]
        assert 2 == harness.daemon.slot.current.manifest.version
        statuses = [json.loads(m.payload) for m in harness.transport.messages("model")]
        assert 2 == statuses[-1]["model"]["version"]

    def test_a_verified_newer_model_ends_the_loops_wait_at_once(self, tmp_path: Path) -> None:
        """With no file activity and a 30 s poll, the loop is woken to swap as soon as v2 is verified."""
        config = make_config(tmp_path).model_copy(
            update={"ingest": IngestConfig(watch="inotify", poll_interval_s=30.0)}
        )
        with closing(Harness(config)) as harness:
            harness.daemon.tick(0.01)
            write_linear_model(config.model.directory / "v2", version=2)
            started = time.monotonic()
            harness.daemon.tick(10.0)
            assert 2 == harness.daemon.slot.current.manifest.version
            assert time.monotonic() - started < 5.0

    def test_a_corrupt_newer_model_is_refused_and_the_old_one_keeps_scoring(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """A version 2 with a broken model file is refused; alerts keep coming from version 1."""
        write_linear_model(config.model.directory / "v2", version=2)
        (config.model.directory / "v2" / "model.onnx").write_bytes(b"garbage")
        time.sleep(0.5)  # the watcher checks the store every 10 ms: it has looked, and refused
        harness.settle(5)
        harness.feed(lines(0, PROFILE))
        assert {1} == {a["model"]["version"] for a in harness.alerts()}  # type: ignore[index]


class TestHeartbeat:
    def test_heartbeat_reports_counters_and_drift_away_from_the_training_data(self, tmp_path: Path) -> None:
        """Temperatures 40 training stds away make the heartbeat say drifting, with the line count."""
        config = make_config(tmp_path).model_copy(update={"heartbeat_interval_s": 0.1})
        with closing(Harness(config)) as harness:
            harness.settle(3)  # a heartbeat before any data
            write(config, lines(0, [0.1] * 200))  # j1_temp 40.0 against a reference of 0 ± 1
            harness.settle()
            beats = [json.loads(m.payload) for m in harness.transport.messages("heartbeat")]
        assert "unknown" == beats[0]["drift"]
        assert ("drifting", 200) == (beats[-1]["drift"], beats[-1]["lines"])
