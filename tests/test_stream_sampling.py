"""A stream at another rate than the model's: reported degraded, or resampled onto the model's grid.

The model here is the tiny linear one (`tests.models`) with windows of 4 samples, hop 2,
trained (it says) at 50 Hz; the logs are written at 10 Hz or 50 Hz.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig, IngestConfig, PolicyConfig
from agent.contract.features import FeatureSpec, batch_features
from agent.contract.sampling import Sampling, resample
from agent.daemon import AgentDaemon
from agent.replay import ALERTS_FILE, SCORES_FILE, SUMMARY_FILE, load_replay_model, replay_files
from agent.testing import InMemoryTransport, ManualClock
from tests.agent_config import agent_config, stream, tiny_agent
from tests.models import CHANNELS, write_linear_model

REPO = Path(__file__).resolve().parent.parent
SPEC_50HZ = FeatureSpec(
    channels=CHANNELS, window=20, hop=10, statistics=("mean", "max"), sampling=Sampling(rate_hz=50.0)
)


def _log(
    rate_hz: float, seconds: float, start: float = 1_767_225_600.0
) -> tuple[str, np.ndarray, np.ndarray]:
    """A CSV log ``ts,J1,T1``: a current ramp that crosses the alert threshold, a steady temperature."""
    n = int(seconds * rate_hz)
    ts = start + np.round(np.arange(n) / rate_hz, 3)
    current = np.clip((ts - start) / seconds * 1.6, 0.0, None)
    values = np.column_stack([current, np.full(n, 40.0)])
    text = "ts,J1,T1\n" + "".join(f"{t:.3f},{c:.6f},{v:.1f}\n" for t, (c, v) in zip(ts, values, strict=True))
    return text, ts, values


def _config(tmp_path: Path, *, resample_stream: bool) -> AgentConfig:
    write_linear_model(tmp_path / "bundled", spec=SPEC_50HZ)
    return tiny_agent(
        tmp_path,
        stream_options={"resample": resample_stream},
        ingest=IngestConfig(watch="poll", poll_interval_s=0.01),
        policy=PolicyConfig(on_delay_windows=1, off_delay_windows=1),
        heartbeat_interval_s=3600,
    )


def _start(config: AgentConfig) -> tuple[AgentDaemon, InMemoryTransport, ManualClock]:
    transport, clock = InMemoryTransport(), ManualClock()
    daemon = AgentDaemon(config, transport=transport, clock=clock)
    daemon.startup()
    return daemon, transport, clock


def _read_all(daemon: AgentDaemon, clock: ManualClock, lines: int) -> None:
    """Tick until the stream has processed `lines` lines (a generous bound on ticks, not on time)."""
    for _ in range(500):
        if daemon.streams[0].counters.lines >= lines:
            return
        daemon.tick(0.0)
        clock.advance(0.5)
    raise AssertionError(f"read {daemon.streams[0].counters.lines} of {lines} lines")


def _run_daemon(config: AgentConfig, text: str) -> tuple[AgentDaemon, InMemoryTransport]:
    (config.streams[0].directory / "arm1.csv").write_text(text)
    daemon, transport, clock = _start(config)
    _read_all(daemon, clock, text.count("\n") - 1)
    return daemon, transport


class TestRateVerdict:
    def test_a_ten_hertz_stream_for_a_fifty_hertz_model_is_reported_degraded(self, tmp_path: Path) -> None:
        """Not resampled: scored as logged, and the stream's degraded reason names both rates."""
        config = _config(tmp_path, resample_stream=False)
        text, _, _ = _log(10.0, 30.0)
        daemon, _ = _run_daemon(config, text)
        try:
            status = daemon.streams[0].sampling.status()
            assert status["verdict"] == "rate_mismatch"
            assert status["rate_hz"] == pytest.approx(10.0, rel=1e-3)
            assert status["model_rate_hz"] == 50.0
            reason = daemon._streams[0].degraded_reason()
            assert reason is not None
            assert "10 Hz" in reason
            assert "50 Hz" in reason
            assert daemon.streams[0].counters.windows == (300 - 20) // 10 + 1  # scored as logged
        finally:
            daemon.shutdown()

    def test_a_stream_at_the_models_rate_is_not_degraded(self, tmp_path: Path) -> None:
        """50 Hz logs for a 50 Hz model: verdict ok, no degraded reason."""
        config = _config(tmp_path, resample_stream=False)
        daemon, _ = _run_daemon(config, _log(50.0, 10.0)[0])
        try:
            assert daemon.streams[0].sampling.status()["verdict"] == "ok"
            assert daemon._streams[0].degraded_reason() is None
        finally:
            daemon.shutdown()


def test_a_replay_of_logs_at_another_rate_says_the_stream_would_be_degraded(tmp_path: Path) -> None:
    """The replay summary carries the measured rate and the degraded reason the live agent would report."""
    config = _config(tmp_path, resample_stream=False)
    (tmp_path / "arm1.csv").write_text(_log(10.0, 30.0)[0])
    model = load_replay_model(config, config.streams[0])
    summary = replay_files(config, config.streams[0], [tmp_path / "arm1.csv"], model, tmp_path / "out")
    written = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert written["sampling"]["verdict"] == "rate_mismatch"
    assert written["degraded"] == summary.degraded
    assert summary.degraded is not None
    assert "10 Hz" in summary.degraded


class TestResampling:
    def test_a_resampled_stream_is_windowed_on_the_models_grid(self, tmp_path: Path) -> None:
        """Resample = true: the 10 Hz log's windows are those of the contract's resampling at 50 Hz."""
        config = _config(tmp_path, resample_stream=True)
        text, ts, values = _log(10.0, 30.0)
        grid = resample(ts, values, SPEC_50HZ.sampling)  # type: ignore[arg-type]
        expected, _ = batch_features(grid.values, SPEC_50HZ)
        out = tmp_path / "replay"
        (tmp_path / "arm1.csv").write_text(text)
        model = load_replay_model(config, config.streams[0])
        summary = replay_files(config, config.streams[0], [tmp_path / "arm1.csv"], model, out)
        assert summary.windows == len(expected)
        rows = (out / SCORES_FILE).read_text().splitlines()[1:]
        scores = np.array([float(r.split(",")[-1]) for r in rows])
        np.testing.assert_allclose(scores, expected[:, 0], rtol=1e-6, atol=1e-6)  # the model: j1_current mean
        first = rows[0].split(",")
        assert float(first[2]) - float(first[1]) == pytest.approx(19 / 50.0, abs=1e-6)  # 20 grid samples

    def test_a_resampled_stream_is_not_degraded_and_gives_the_live_event_ids(self, tmp_path: Path) -> None:
        """The daemon resamples as the replay does: same event ids; the stream is not degraded."""
        text, _, _ = _log(10.0, 30.0)
        daemon, transport = _run_daemon(_config(tmp_path / "live", resample_stream=True), text)
        try:
            assert daemon._streams[0].degraded_reason() is None
            assert daemon.streams[0].sampling.status()["resampled"] is True
        finally:
            daemon.shutdown()
        live = [json.loads(m.payload)["event_id"] for m in transport.messages("alert")]
        config = _config(tmp_path / "replay", resample_stream=True)
        (tmp_path / "arm1.csv").write_text(text)
        model = load_replay_model(config, config.streams[0])
        replay_files(config, config.streams[0], [tmp_path / "arm1.csv"], model, tmp_path / "out")
        replayed = [
            json.loads(line)["event_id"] for line in (tmp_path / "out" / ALERTS_FILE).read_text().splitlines()
        ]
        assert live
        assert replayed == live

    def test_a_restart_continues_the_grid_where_it_stopped(self, tmp_path: Path) -> None:
        """Saved and restored half way, a 7 Hz stream (off the 50 Hz grid) gives the events of one run."""
        config = _config(tmp_path, resample_stream=True)
        text, _, _ = _log(7.0, 40.0)
        lines = text.splitlines(keepends=True)
        path = config.streams[0].directory / "arm1.csv"
        path.write_text("".join(lines[:137]))
        first, first_sent, clock = _start(config)
        _read_all(first, clock, 136)
        first.shutdown()
        with path.open("a") as handle:
            handle.write("".join(lines[137:]))
        second, second_sent, clock = _start(config)
        _read_all(second, clock, len(lines) - 1 - 136)
        windows = first.streams[0].counters.windows + second.streams[0].counters.windows
        second.shutdown()
        live = [
            (e["event_id"], e["score"])
            for e in (json.loads(m.payload) for t in (first_sent, second_sent) for m in t.messages("alert"))
        ]
        (tmp_path / "arm1.csv").write_text(text)
        model = load_replay_model(config, config.streams[0])
        whole = replay_files(config, config.streams[0], [tmp_path / "arm1.csv"], model, tmp_path / "whole")
        replayed = [
            (e["event_id"], e["score"])
            for e in map(json.loads, (tmp_path / "whole" / ALERTS_FILE).read_text().splitlines())
        ]
        assert windows == whole.windows
        assert live
        assert live == replayed


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


class TestCheck:
    def _setup(self, tmp_path: Path, rate_hz: float, **extra: object) -> Path:
        write_linear_model(tmp_path / "bundled", spec=SPEC_50HZ)
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "arm1.csv").write_text(_log(rate_hz, 20.0)[0])
        config = tmp_path / "config.toml"
        config.write_text(agent_config(port=1883, streams=[{**stream(), **extra}]))
        return config

    def test_check_warns_when_the_logs_are_at_another_rate_than_the_model(self, tmp_path: Path) -> None:
        """A 10 Hz log and a 50 Hz model: check exits 0 with a warning naming both rates and the fix."""
        result = _agent("check", "--config", str(self._setup(tmp_path, 10.0)))
        assert result.returncode == 0, result.stderr
        assert "model ok" in result.stdout
        assert "warning: stream arm1" in result.stderr
        assert "10 Hz" in result.stderr
        assert "50 Hz" in result.stderr
        assert "resample = true" in result.stderr

    def test_check_is_quiet_at_the_models_rate_or_when_the_stream_resamples(self, tmp_path: Path) -> None:
        """50 Hz logs: no warning; 10 Hz logs with resample = true: no warning either."""
        same = _agent("check", "--config", str(self._setup(tmp_path / "same", 50.0)))
        resampled = _agent("check", "--config", str(self._setup(tmp_path / "resampled", 10.0, resample=True)))
        assert (same.returncode, resampled.returncode) == (0, 0)
        assert "warning" not in same.stderr
        assert "warning" not in resampled.stderr

    def test_check_warns_of_a_model_that_does_not_say_its_rate(self, tmp_path: Path) -> None:
        """A model from before sampling existed: the check says the rate cannot be told."""
        config = self._setup(tmp_path, 10.0)
        write_linear_model(tmp_path / "bundled")  # the old spec: no sampling
        result = _agent("check", "--config", str(config))
        assert result.returncode == 0
        assert "does not say the sample rate" in result.stderr


def test_the_simulators_history_warns_when_its_rate_is_not_the_bundled_models(tmp_path: Path) -> None:
    """robotpm-sim history at its default 10 Hz says the bundled model was trained at 50 Hz; not at 50 Hz."""
    common = ["history", "--robots", "1", "--hours", "0.01"]
    slow = subprocess.run(
        [sys.executable, "-m", "robotpm_sim.cli", *common, "--out", str(tmp_path / "slow")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    fast = subprocess.run(
        [
            sys.executable,
            "-m",
            "robotpm_sim.cli",
            *common,
            "--rate-hz",
            "50",
            "--out",
            str(tmp_path / "fast"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (slow.returncode, fast.returncode) == (0, 0)
    assert "10 Hz" in slow.stderr
    assert "50 Hz" in slow.stderr
    assert "warning" not in fast.stderr
