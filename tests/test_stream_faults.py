"""A failure confined to one stream degrades that stream, reported and retried; the others go on.

In process (the daemon on the in-memory transport and clock, real files): a stream
directory replaced by a file, a follower that runs out of file descriptors, a
pipeline that fails half-way. Then the real agent, without root's power to read any
file, with one stream directory it may not read.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, IngestConfig, MetricsConfig, ModelConfig, PolicyConfig
from agent.contract.streams import StreamConfig
from agent.ingest import StreamFollower
from agent.streams.pipeline import StreamPipeline
from tests.agent_config import agent_config, stream
from tests.agent_process import spawn_agent
from tests.agent_runs import AgentRun, outbox_alerts, saved_samples
from tests.daemon_harness import Harness, harness_fixture  # noqa: F401 (pytest fixture: harness)
from tests.models import write_linear_model
from tests.test_daemon import HEADER, PROFILE, lines

REPO = Path(__file__).resolve().parent.parent


def two_streams(tmp_path: Path, **ingest: Any) -> AgentConfig:
    for name in ("arm1", "arm2"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    write_linear_model(tmp_path / "bundled", version=1)
    return AgentConfig(
        robot_id="r1",
        site="lab",
        state_dir=tmp_path / "state",
        streams=tuple(
            StreamConfig(
                name=name,
                directory=tmp_path / name,
                timestamp_field="ts",
                channels={"J1": "j1_current", "T1": "j1_temp"},
            )
            for name in ("arm1", "arm2")
        ),
        model=ModelConfig(directory=tmp_path / "store", bundled=tmp_path / "bundled", probation_windows=0),
        ingest=IngestConfig(watch="poll", poll_interval_s=0.01, max_hold_s=0.0, **ingest),
        policy=PolicyConfig(on_delay_windows=2, off_delay_windows=2),
        heartbeat_interval_s=0.5,
    )


def append(config: AgentConfig, stream_name: str, text: str) -> None:
    path = config.state_dir.parent / stream_name / f"{stream_name}.csv"
    new = not path.exists()
    with path.open("a") as handle:
        handle.write((HEADER if new else "") + text)


def alert_ids(harness: Harness, stream_name: str) -> list[str]:
    return [str(a["event_id"]) for a in harness.alerts() if a["stream"] == stream_name]


def settle_until(harness: Harness, condition: Callable[[], bool], ticks: int = 400) -> None:
    for _ in range(ticks):
        if condition():
            return
        harness.settle(1)
    raise AssertionError("condition not met")


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> AgentConfig:
    return two_streams(tmp_path)


class TestOneStreamFails:
    def test_a_stream_directory_replaced_by_a_file_degrades_that_stream_only_and_it_recovers(
        self, harness: Harness, config: AgentConfig, tmp_path: Path
    ) -> None:
        """arm1's directory becomes a file: arm1 is reported degraded, arm2 still alerts; arm1 comes back."""
        append(config, "arm1", lines(0, [0.1] * 8))
        harness.settle(5)
        saved = tmp_path / "arm1-saved"
        (tmp_path / "arm1").rename(saved)
        (tmp_path / "arm1").write_text("not a directory\n")
        append(config, "arm2", lines(0, PROFILE))
        harness.settle(40)
        assert "stream:arm1" in harness.daemon.faults
        assert "NotADirectoryError" in harness.daemon.faults["stream:arm1"]
        assert "raised" in [a["state"] for a in harness.alerts() if a["stream"] == "arm2"]
        beats = [json.loads(m.payload) for m in harness.transport.messages("heartbeat")]
        assert "stream:arm1" in beats[-1]["faults"]
        assert "stream:arm2" not in beats[-1]["faults"]
        (tmp_path / "arm1").unlink()
        saved.rename(tmp_path / "arm1")
        append(config, "arm1", lines(8, [0.1] * 2 + PROFILE))
        settle_until(harness, lambda: "stream:arm1" not in harness.daemon.faults)
        settle_until(harness, lambda: harness.daemon.streams[0].counters.lines >= 10 + len(PROFILE))
        assert "raised" in [a["state"] for a in harness.alerts() if a["stream"] == "arm1"]

    def test_a_fifo_in_a_log_files_place_is_in_the_heartbeat_faults_and_the_metrics_while_arm2_alerts(
        self, tmp_path: Path
    ) -> None:
        """arm1.csv renamed away and a FIFO made in its place: the heartbeat's faults and the metrics file
        name arm1 refused (not_regular_file), arm2 still alerts; a log file back clears it.
        """
        config = two_streams(tmp_path)
        config = config.model_copy(update={"metrics": MetricsConfig(textfile=tmp_path / "robotpm.prom")})
        with closing(Harness(config)) as harness:
            append(config, "arm1", lines(0, [0.1] * 8))
            harness.settle(5)
            arm1 = tmp_path / "arm1" / "arm1.csv"
            arm1.rename(tmp_path / "arm1" / "arm1.old")
            os.mkfifo(arm1)
            append(config, "arm2", lines(0, PROFILE))
            harness.settle(40)
            assert "raised" in [a["state"] for a in harness.alerts() if a["stream"] == "arm2"]
            beat = json.loads(harness.transport.messages("heartbeat")[-1].payload)
            assert "not_regular_file" in beat["faults"]["stream:arm1"]
            assert "stream:arm2" not in beat["faults"]
            metrics = (tmp_path / "robotpm.prom").read_text()
            assert 'robotpm_stream_degraded{stream="arm1"} 1' in metrics
            assert "not_regular_file" in metrics
            arm1.unlink()
            append(config, "arm1", lines(8, [0.1] * 2))
            settle_until(harness, lambda: "stream:arm1" not in harness.daemon.faults)

    def test_too_many_open_files_degrades_the_stream_with_growing_back_off_then_it_catches_up(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """EMFILE from arm1's follower: retried after 1, 2, 4 s (capped), arm2 goes on; no line is lost."""
        config = two_streams(tmp_path, retry_max_s=4.0)
        with closing(Harness(config)) as harness:
            self._emfile(harness, config, monkeypatch)

    @staticmethod
    def _emfile(harness: Harness, config: AgentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
        failing = FailingRead("arm1", errno.EMFILE)
        monkeypatch.setattr(StreamFollower, "read", failing)
        append(config, "arm1", lines(0, PROFILE))
        append(config, "arm2", lines(0, PROFILE))
        harness.settle(200)  # 10 s of the manual clock
        assert (
            "EMFILE" in harness.daemon.faults["stream:arm1"]
            or "Too many open files" in (harness.daemon.faults["stream:arm1"])
        )
        gaps = [b - a for a, b in zip(failing.calls, failing.calls[1:], strict=False)]
        assert gaps[:3] == pytest.approx([1.0, 2.0, 4.0], abs=0.06)
        assert max(gaps) <= 4.0 + 0.06, "the back-off is capped at ingest.retry_max_s"
        assert alert_ids(harness, "arm2")
        assert [] == alert_ids(harness, "arm1")
        failing.failing = False
        settle_until(harness, lambda: "stream:arm1" not in harness.daemon.faults)
        settle_until(harness, lambda: harness.daemon.streams[0].counters.lines >= len(PROFILE))
        assert len(PROFILE) == harness.daemon.streams[0].counters.lines
        assert {"raised", "cleared"} <= {a["state"] for a in harness.alerts() if a["stream"] == "arm1"}

    def test_a_failure_half_way_through_a_stream_loses_and_repeats_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The pipeline fails after part of a read: it rewinds to its last commit; ids equal a clean run."""
        with closing(Harness(two_streams(tmp_path / "clean"))) as clean:
            append(clean.config, "arm1", lines(0, PROFILE))
            clean.settle(20)
            expected = alert_ids(clean, "arm1")
        config = two_streams(tmp_path / "faulty")
        with closing(Harness(config)) as harness:
            real = StreamPipeline.process
            failures = {"left": 1}

            def process(pipeline: StreamPipeline, blocks: Any, *, replayed: bool) -> Any:
                events = real(pipeline, blocks, replayed=replayed)
                if pipeline.name == "arm1" and failures["left"] and events:
                    failures["left"] -= 1  # the events of this call are lost with the exception
                    raise OSError(errno.EIO, "Input/output error")
                return events

            monkeypatch.setattr(StreamPipeline, "process", process)
            text = lines(0, PROFILE)
            for i in range(0, len(PROFILE), 5):  # the fault's lines arrive over several ticks
                append(config, "arm1", "".join(text.splitlines(keepends=True)[i : i + 5]))
                harness.settle(2)
            settle_until(harness, lambda: "stream:arm1" not in harness.daemon.faults and not failures["left"])
            harness.settle(60)
            assert 0 == failures["left"], "the fault was injected"
            assert expected == alert_ids(harness, "arm1")


class FailingRead:
    """Replaces `StreamFollower.read`: the named stream's reads raise `OSError(code)` while ``failing``."""

    def __init__(self, stream_name: str, code: int) -> None:
        self._read = StreamFollower.read
        self._stream = stream_name
        self._code = code
        self.failing = True
        self.calls: list[float] = []

    def __get__(self, follower: StreamFollower, owner: type) -> Callable[[int], Any]:
        def read(max_bytes: int) -> Any:
            if follower._stream.name == self._stream and self.failing:
                self.calls.append(follower._clock())
                raise OSError(self._code, os.strerror(self._code))
            return self._read(follower, max_bytes)

        return read


# -- the real agent, without root's power to read any file -----------------------------------------

WITHOUT_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
"""Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: file modes bind it as they bind the unit's user."""


def test_an_unreadable_stream_directory_is_reported_while_the_other_stream_alerts(tmp_path: Path) -> None:
    """The real agent, file modes binding it: arm1's directory is mode 000. No traceback, arm2's alerts
    are stored, status names arm1 degraded with the permission error; made readable, arm1 is read.
    """
    for name in ("arm1", "arm2"):
        (tmp_path / name).mkdir()
    write_linear_model(tmp_path / "bundled")
    (tmp_path / "config.toml").write_text(
        agent_config(
            port=1,  # no broker: alerts wait in the outbox
            robot_id="r1",
            heartbeat_interval_s=0.5,
            streams=[stream("arm1", "arm1"), stream("arm2", "arm2")],
            ingest={"watch": "poll", "poll_interval_s": 0.05},
            policy={"on_delay_windows": 2, "off_delay_windows": 2},
        )
    )
    for name in ("arm1", "arm2"):
        (tmp_path / name / f"{name}.csv").write_text(HEADER + lines(0, PROFILE))
    (tmp_path / "arm1").chmod(0o000)
    output = tmp_path / "agent.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOTPM")}
    command = [sys.executable, "-m", "agent.cli", "run", "--config", str(tmp_path / "config.toml")]
    with output.open("wb") as out:
        agent = subprocess.Popen(
            [*WITHOUT_DAC_OVERRIDE, *command],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    run = AgentRun(tmp_path / "config.toml", output)
    run.process = agent  # started without root's DAC override: watched like any agent run
    try:
        state = tmp_path / "state"
        run.wait(lambda: any(a["stream"] == "arm2" for a in outbox_alerts(state)), "arm2's alerts")
        run.wait(lambda: degraded_line(run.status(), "arm1", "PermissionError"), "arm1 reported")
        assert not degraded_line(run.status(), "arm2", "")
        assert not any(a["stream"] == "arm1" for a in outbox_alerts(state))
        (tmp_path / "arm1").chmod(0o755)
        run.wait(lambda: any(a["stream"] == "arm1" for a in outbox_alerts(state)), "arm1's alerts")
        run.wait(lambda: not degraded_line(run.status(), "arm1", ""), "arm1 no longer degraded")
        agent.send_signal(signal.SIGTERM)
        assert 0 == agent.wait(timeout=30)
    finally:
        (tmp_path / "arm1").chmod(0o755)
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    log = output.read_text()
    assert "Traceback" not in log
    assert '"stream_degraded"' in log
    assert '"stream_recovered"' in log


def degraded_line(status: str, stream_name: str, reason: str) -> bool:
    """Whether `robotpm-agent status` names the stream degraded (for `reason`)."""
    return any(stream_name in line and "degraded" in line and reason in line for line in status.splitlines())


def two_stream_agent(tmp_path: Path, heartbeat_interval_s: float = 0.5, **ingest: float | str) -> AgentRun:
    """A real agent (no broker: alerts wait in the outbox) on streams arm1 and arm2, not started."""
    for name in ("arm1", "arm2"):
        (tmp_path / name).mkdir()
    write_linear_model(tmp_path / "bundled")
    (tmp_path / "config.toml").write_text(
        agent_config(
            port=1,
            robot_id="r1",
            heartbeat_interval_s=heartbeat_interval_s,
            streams=[stream("arm1", "arm1", patterns=["*.csv"]), stream("arm2", "arm2")],
            ingest=ingest,
            policy={"on_delay_windows": 2, "off_delay_windows": 2},
        )
    )
    return AgentRun(tmp_path / "config.toml", tmp_path / "agent.out")


def stream_alerts(state: Path, stream_name: str) -> int:
    return sum(1 for a in outbox_alerts(state) if a["stream"] == stream_name)


def stop_promptly(run: AgentRun) -> None:
    """SIGTERM ends it with exit 0, well inside the unit's TimeoutStopSec."""
    assert 0 == run.stop(timeout=10)


def test_a_followed_file_replaced_by_a_fifo_or_a_device_degrades_only_its_stream_running_or_stopped(
    tmp_path: Path,
) -> None:
    """arm1.csv becomes a FIFO while the agent runs, then a symlink to /dev/zero while it is stopped:
    the agent stays up, status names arm1 degraded (not_regular_file), the refusal is logged once a
    run, arm2 goes on alerting, and SIGTERM ends it at once with exit 0. No traceback.
    """
    run = two_stream_agent(tmp_path, watch="poll", poll_interval_s=0.05)
    state = tmp_path / "state"
    arm1, arm2 = tmp_path / "arm1" / "arm1.csv", tmp_path / "arm2" / "arm2.csv"
    arm1.write_text(HEADER + lines(0, PROFILE))
    arm2.write_text(HEADER + lines(0, PROFILE))
    run.start()
    try:
        run.wait(lambda: bool(stream_alerts(state, "arm1") and stream_alerts(state, "arm2")), "both alerting")
        arm1.rename(tmp_path / "arm1" / "arm1.old")  # leaves the stream's names
        os.mkfifo(arm1)
        run.wait(lambda: degraded_line(run.status(), "arm1", "not_regular_file"), "the FIFO reported")
        before = stream_alerts(state, "arm2")
        with arm2.open("a") as handle:
            handle.write(lines(len(PROFILE), PROFILE))
        run.wait(lambda: stream_alerts(state, "arm2") > before, "arm2's new alerts while arm1 is refused")
        assert not degraded_line(run.status(), "arm2", "")
        stop_promptly(run)
        arm1.unlink()
        arm1.symlink_to("/dev/zero")  # a device that would never end, were it read
        run.start()
        run.wait(lambda: degraded_line(run.status(), "arm1", "not_regular_file"), "the device reported")
        before = stream_alerts(state, "arm2")
        with arm2.open("a") as handle:
            handle.write(lines(2 * len(PROFILE), PROFILE))
        run.wait(lambda: stream_alerts(state, "arm2") > before, "arm2's new alerts after the restart")
        stop_promptly(run)
    finally:
        run.kill()
    assert "Traceback" not in run.log()
    refused = [(e["path"], e["reason"]) for e in run.events("file_refused")]
    assert refused == [(str(arm1), "not_regular_file")] * 2, "once a run, not at every scan"


def test_ten_thousand_files_under_a_1024_descriptor_limit_are_read_and_the_other_stream_goes_on(
    tmp_path: Path,
) -> None:
    """10,000 small files in arm1's directory, the agent under RLIMIT_NOFILE=1024 with the default
    max_open_files: no "Too many open files", no traceback; arm1 is read far past the limit (the
    follower tests check every line of such a directory), arm2 alerts, the wait for descriptors is
    logged, and SIGTERM ends it with exit 0.
    """
    # inotify finds the files; listing 10,000 files each second (the default rescan) and the status
    # file's per-file lag each heartbeat would take most of the test's time on a loaded machine
    run = two_stream_agent(tmp_path, heartbeat_interval_s=5.0, rescan_interval_s=10.0)
    directory = os.open(tmp_path / "arm1", os.O_RDONLY)
    try:
        for i in range(10_000):  # two lines each, in time order across the files
            fd = os.open(f"f{i:05d}.csv", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=directory)
            os.write(fd, (HEADER + lines(2 * i, [0.1, 0.1])).encode())
            os.close(fd)
    finally:
        os.close(directory)
    (tmp_path / "arm2" / "arm2.csv").write_text(HEADER + lines(0, PROFILE))
    run.process = spawn_agent(run.config, run.output, preexec_fn=lambda: limit_descriptors(1024))
    state = tmp_path / "state"
    try:
        run.wait(lambda: stream_alerts(state, "arm2") > 0, "arm2's alerts")
        # 2,000 files read (twice the descriptor limit): every one was opened, read and closed in turn
        run.wait(lambda: saved_samples(state, "arm1") >= 4_000, "arm1 read past the limit", timeout=90)
        stop_promptly(run)
        read = saved_samples(state, "arm1")
    finally:
        run.kill()
    log = run.log()
    assert "Too many open files" not in log
    assert "Traceback" not in log
    assert [256] == [e["max_open_files"] for e in run.events("open_files_bound_reached")]
    assert not run.events("stream_degraded")
    assert read % 2 == 0, "whole files"
    assert read <= 20_000, "none read twice"


def limit_descriptors(n: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
