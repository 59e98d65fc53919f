"""Replay: a recorded log scored offline gives the live agent's windows, scores and event ids."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog

from agent.config import AgentConfig, IngestConfig, ModelConfig, PolicyConfig
from agent.contract.manifest import MANIFEST_FILE, ModelManifest
from agent.contract.streams import StreamConfig
from agent.daemon import AgentDaemon
from agent.errors import ModelRejectedError
from agent.replay import ALERTS_FILE, SCORES_FILE, SUMMARY_FILE, load_replay_model, replay_files
from agent.testing import InMemoryTransport, ManualClock
from robotpm_sim.arm import ArmSimulator
from robotpm_sim.faults import Fault
from robotpm_sim.records import header_line
from tests.agent_config import agent_config, stream, tiny_agent
from tests.models import write_linear_model
from trainer.config import DEFAULT_CHANNELS

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "agent" / "models" / "bundled"
RATE_HZ = 50.0


def _recorded(tmp_path: Path, data: bytes) -> Path:
    """A recorded log with `data`, as a technician would copy it off the robot."""
    recorded = tmp_path / "recorded.csv"
    recorded.write_bytes(data)
    return recorded


def _config(tmp_path: Path, bundled: Path = BUNDLED) -> AgentConfig:
    logs = tmp_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return AgentConfig(
        robot_id="robot-007",
        site="lab",
        state_dir=tmp_path / "state",
        streams=(
            StreamConfig(name="arm1", directory=logs, channels=dict(DEFAULT_CHANNELS), timestamp_field="ts"),
        ),
        model=ModelConfig(directory=tmp_path / "store", bundled=bundled, probation_windows=0),
        ingest=IngestConfig(watch="poll", poll_interval_s=0.01, read_chunk_bytes=64 * 1024),
        policy=PolicyConfig(on_delay_windows=2, off_delay_windows=3),
        heartbeat_interval_s=3600,
    )


def _fault_log(mode: str = "bearing_wear", joint: int = 3, seconds: float = 90.0) -> bytes:
    sim = ArmSimulator("robot-007", rate_hz=RATE_HZ, seed=11, faults=[Fault(mode, 15.0, 45.0, joint=joint)])
    return header_line() + sim.lines(0, int(seconds * RATE_HZ))


def _live_events(config: AgentConfig, log: bytes, pieces: int = 7) -> list[dict[str, object]]:
    """The alert payloads a daemon publishes while the log is appended in `pieces` (in-memory broker)."""
    transport = InMemoryTransport()
    clock = ManualClock()
    daemon = AgentDaemon(config, transport=transport, clock=clock)
    daemon.startup()
    path = config.streams[0].directory / "arm1.csv"
    total_lines = log.count(b"\n") - 1
    try:
        cuts = np.linspace(0, len(log), pieces + 1).astype(int)
        for lo, hi in itertools.pairwise(cuts):
            with path.open("ab") as handle:
                handle.write(log[lo:hi])
            for _ in range(3):
                daemon.tick(0.0)
                clock.advance(0.2)
        deadline = time.monotonic() + 60.0
        while daemon.streams[0].counters.lines < total_lines:
            assert time.monotonic() < deadline, "the daemon did not read the whole log in time"
            daemon.tick(0.01)
            clock.advance(1.0)
    finally:
        daemon.shutdown()
    return [json.loads(m.payload) for m in transport.messages("alert")]


def _replayed(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / ALERTS_FILE).read_text().splitlines()]


def _comparable(event: dict[str, object]) -> dict[str, object]:
    """An event without what only says when and how it was sent (the wall clock, live or backlog)."""
    return {k: v for k, v in event.items() if k not in ("emitted_at", "replayed")}


class TestReplayEqualsLive:
    def test_replayed_events_have_the_live_agents_event_ids_and_contents(self, tmp_path: Path) -> None:
        """A daemon fed a fault log in pieces and a replay of the same file emit identical events."""
        live_dir, replay_dir = tmp_path / "live", tmp_path / "replay"
        log = _fault_log()
        live = _live_events(_config(live_dir), log)
        assert [e["state"] for e in live].count("raised") >= 1, "the fault raised nothing live"
        recorded = _recorded(tmp_path, log)
        config = _config(replay_dir)
        model = load_replay_model(config, config.streams[0])
        replay_files(config, config.streams[0], [recorded], model, replay_dir / "out")
        replayed = _replayed(replay_dir / "out")
        assert [e["event_id"] for e in replayed] == [e["event_id"] for e in live]
        for got, want in zip(replayed, live, strict=True):
            window = dict(want["window"])  # type: ignore[call-overload]
            window["source_file"] = str(recorded)  # the same lines, read from another path
            assert _comparable(got) == {**_comparable(want), "window": window}

    def test_two_replays_of_the_same_files_write_the_same_bytes(self, tmp_path: Path) -> None:
        """Scores and alerts files are identical on a second run; emitted_at is the window's end."""
        recorded = _recorded(tmp_path, _fault_log(seconds=60.0))
        config = _config(tmp_path)
        model = load_replay_model(config, config.streams[0])
        first = replay_files(config, config.streams[0], [recorded], model, tmp_path / "a")
        replay_files(config, config.streams[0], [recorded], model, tmp_path / "b")
        for name in (SCORES_FILE, ALERTS_FILE):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        events = _replayed(tmp_path / "a")
        assert events
        assert all(e["replayed"] is True for e in events)
        assert all(
            e["emitted_at"]
            .replace("Z", "+00:00")
            .startswith(  # type: ignore[attr-defined]
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e["window"]["end"]))  # type: ignore[index]
            )
            for e in events
        )
        assert first.windows == (60 * 50 - 400) // 100 + 1

    def test_the_score_table_has_one_row_per_window_with_every_heads_score(self, tmp_path: Path) -> None:
        """scores.csv: one row per window, consecutive window numbers, a finite score for each head."""
        recorded = _recorded(tmp_path, _fault_log(seconds=40.0))
        config = _config(tmp_path)
        model = load_replay_model(config, config.streams[0])
        summary = replay_files(config, config.streams[0], [recorded], model, tmp_path / "out")
        with (tmp_path / "out" / SCORES_FILE).open() as handle:
            rows = list(csv.DictReader(handle))
        heads = [f"{h.component}/{h.failure_mode}" for h in model.scorer.manifest.heads]
        assert [int(r["window"]) for r in rows] == list(range(summary.windows))
        assert all(np.isfinite(float(r[h])) for r in rows for h in heads)
        assert float(rows[0]["end"]) - float(rows[0]["start"]) == pytest.approx(399 / RATE_HZ, abs=1e-3)

    def test_files_are_read_in_the_order_given_as_one_stream(self, tmp_path: Path) -> None:
        """A log split in two files (the second without a header) replays as the whole log does."""
        log = _fault_log(seconds=60.0)
        whole = tmp_path / "whole.csv"
        whole.write_bytes(log)
        cut = log.index(b"\n", len(log) // 2) + 1
        first, second = tmp_path / "arm1.csv.1", tmp_path / "arm1.csv"
        first.write_bytes(log[:cut])
        second.write_bytes(log[cut:])
        config = _config(tmp_path)
        model = load_replay_model(config, config.streams[0])
        replay_files(config, config.streams[0], [whole], model, tmp_path / "whole")
        replay_files(config, config.streams[0], [first, second], model, tmp_path / "split")
        assert [e["event_id"] for e in _replayed(tmp_path / "split")] == [
            e["event_id"] for e in _replayed(tmp_path / "whole")
        ]

    def test_refused_lines_are_counted_and_quarantined_and_scoring_goes_on(self, tmp_path: Path) -> None:
        """A bad line and an unterminated last line are counted by reason; the rest is scored."""
        log = _fault_log(seconds=20.0)
        lines = log.split(b"\n")
        lines[50] = b"not,a,number" + b",x" * 19
        recorded = tmp_path / "recorded.csv"
        recorded.write_bytes(b"\n".join(lines) + b"1767225600.0,1")  # no newline at the end
        config = _config(tmp_path)
        model = load_replay_model(config, config.streams[0])
        summary = replay_files(config, config.streams[0], [recorded], model, tmp_path / "out")
        assert sum(summary.quarantined.values()) == 2
        assert "unterminated" in summary.quarantined
        assert summary.lines == 20 * 50 - 1
        quarantined = (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()
        assert len(quarantined) == 2


class TestReplayModels:
    def test_a_candidate_that_fails_verification_is_refused(self, tmp_path: Path) -> None:
        """A candidate whose golden vector no longer matches is refused, as the agent would refuse it."""
        candidate = _broken_candidate(tmp_path)
        config = _linear_config(tmp_path)
        with pytest.raises(ModelRejectedError, match="golden"):
            load_replay_model(config, config.streams[0], candidate)

    def test_a_refused_candidate_is_scored_only_when_asked_and_marked_unverified(
        self, tmp_path: Path
    ) -> None:
        """With unverified=True the refused candidate scores, and the summary says why it is unverified."""
        candidate = _broken_candidate(tmp_path)
        config = _linear_config(tmp_path)
        model = load_replay_model(config, config.streams[0], candidate, unverified=True)
        recorded = tmp_path / "log.csv"
        recorded.write_text(
            "ts,J1,T1\n" + "".join(f"{i}.0,{0.1 if i < 8 else 1.0},40.0\n" for i in range(20))
        )
        replay_files(config, config.streams[0], [recorded], model, tmp_path / "out")
        summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
        assert summary["model"]["verified"] is False
        assert "golden" in summary["model"]["refusal"]
        assert summary["events"] == {"raised": 1}

    def test_a_verified_candidate_is_used_instead_of_the_agents_model(self, tmp_path: Path) -> None:
        """--model scores with the candidate: its label is on the events and in the summary."""
        config = _linear_config(tmp_path)
        candidate = tmp_path / "candidate"
        write_linear_model(candidate, version=9, model_id="candidate")
        model = load_replay_model(config, config.streams[0], candidate)
        assert model.verified
        assert model.scorer.manifest.label == "candidate@9"


def _linear_config(tmp_path: Path) -> AgentConfig:
    write_linear_model(tmp_path / "bundled")
    return tiny_agent(tmp_path)


def _broken_candidate(tmp_path: Path) -> Path:
    """A linear model whose manifest's golden output was altered (re-hashed, so it still parses)."""
    candidate = tmp_path / "candidate"
    manifest = write_linear_model(candidate, version=5)
    golden = manifest.golden[0]
    altered = golden.model_copy(update={"expected": {"score": (golden.expected["score"][0] + 5.0,)}})
    broken = manifest.model_copy(update={"golden": (altered,)})
    (candidate / MANIFEST_FILE).write_text(ModelManifest.model_validate(broken.model_dump()).to_json())
    return candidate


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


class TestReplayCommand:
    @pytest.fixture(autouse=True)
    def _keep_logging(self) -> Iterator[None]:
        """agent_main points structlog at this test's captured stdout; later tests must not log there."""
        saved = structlog.get_config()
        yield
        structlog.configure(**saved)

    def test_the_command_writes_its_files_and_exits_0(self, tmp_path: Path) -> None:
        """robotpm-agent replay FILE --out DIR: scores, alerts and summary in DIR, exit code 0."""
        shutil.copytree(BUNDLED, tmp_path / "bundled")
        (tmp_path / "logs").mkdir()
        channels = dict(DEFAULT_CHANNELS)
        config = tmp_path / "config.toml"
        config.write_text(agent_config(port=1883, streams=[stream(channels=channels)]))
        recorded = _recorded(tmp_path, _fault_log(seconds=60.0))
        result = _agent("replay", "--config", str(config), "--out", str(tmp_path / "out"), str(recorded))
        assert result.returncode == 0, result.stderr
        assert "windows" in result.stdout
        summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
        assert summary["model"]["verified"] is True
        assert summary["events"].get("raised", 0) >= 1
        assert summary["windows"] == (60 * 50 - 400) // 100 + 1

    def test_a_missing_file_exits_1_naming_it(self, tmp_path: Path) -> None:
        """A recorded file that does not exist is a clear error (exit 1), and nothing is written."""
        write_linear_model(tmp_path / "bundled")
        (tmp_path / "logs").mkdir()
        config = tmp_path / "config.toml"
        config.write_text(agent_config(port=1883))
        missing = tmp_path / "nope.csv"
        result = _agent("replay", "--config", str(config), "--out", str(tmp_path / "out"), str(missing))
        assert result.returncode == 1
        assert "nope.csv" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out" / SCORES_FILE).exists()

    def test_an_unknown_stream_exits_2_naming_the_option(self, tmp_path: Path) -> None:
        """--stream naming no configured stream is a configuration error (exit 2)."""
        write_linear_model(tmp_path / "bundled")
        (tmp_path / "logs").mkdir()
        config = tmp_path / "config.toml"
        config.write_text(agent_config(port=1883))
        result = _agent(
            "replay", "--config", str(config), "--stream", "arm9", "--out", str(tmp_path), "x.csv"
        )
        assert result.returncode == 2
        assert "--stream" in result.stderr

    def test_an_unverified_candidate_is_refused_without_the_flag_and_marked_with_it(
        self, tmp_path: Path
    ) -> None:
        """Exit 1 naming the golden test; with --unverified exit 0 and a warning on stderr."""
        config = tmp_path / "config.toml"
        _linear_config(tmp_path)
        config.write_text(agent_config(port=1883))
        candidate = _broken_candidate(tmp_path)
        recorded = tmp_path / "log.csv"
        recorded.write_text("ts,J1,T1\n" + "".join(f"{i}.0,0.1,40.0\n" for i in range(10)))
        args = ("replay", "--config", str(config), "--model", str(candidate), "--out", str(tmp_path / "o"))
        refused = _agent(*args, str(recorded))
        assert refused.returncode == 1
        assert "golden" in refused.stderr
        marked = _agent(*args, "--unverified", str(recorded))
        assert marked.returncode == 0, marked.stderr
        assert "UNVERIFIED" in marked.stderr
