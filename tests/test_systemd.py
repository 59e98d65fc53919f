"""The systemd units verify cleanly and stay hardened; the sd_notify client speaks the protocol."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, IngestConfig
from agent.ingest import limits
from agent.sdnotify import Notifier
from tests.agent_config import agent_config
from tests.models import write_linear_model
from tests.mosquitto import Broker

ROOT = Path(__file__).resolve().parent.parent
UNIT_FILES = {
    name: ROOT / "systemd" / name
    for name in ("robotpm-agent.service", "robotpm-trainer.service", "robotpm-trainer.timer")
}
"""The units' only copy in the tree (setup.py puts them into the wheel's packages)."""
UNITS = tuple(UNIT_FILES)
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is needed for these tests (apt-get install systemd)")
    return path


def _stage_units(directory: Path, *, edit: tuple[str, str] | None = None) -> Path:
    """Copy the units into ``directory``, pointing ExecStart at stub programs that exist here.

    ``systemd-analyze verify`` refuses an ExecStart binary that is not installed, and this
    machine has no /opt/robotpm/bin/robotpm-agent. Only the program path changes: the stub takes the
    same arguments, and every other line of each unit is copied unchanged.
    """
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True)
    for program in ("robotpm-agent", "robotpm-train"):
        stub = bin_dir / program
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    for name in UNITS:
        text = UNIT_FILES[name].read_text()
        staged = re.sub(r"^ExecStart=/opt/robotpm/bin/", f"ExecStart={bin_dir}/", text, flags=re.MULTILINE)
        changed = [(a, b) for a, b in zip(text.splitlines(), staged.splitlines(), strict=True) if a != b]
        assert all(a.startswith("ExecStart=/opt/robotpm/bin/robotpm-") for a, _ in changed), changed
        if edit is not None and name == edit[0]:
            staged = staged.replace("\n[Service]\n", f"\n[Service]\n{edit[1]}\n", 1)
        (directory / name).write_text(staged)
    return directory


def _verify(directory: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_require("systemd-analyze"), "verify", "--man=no", str(directory / name)],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=60,
        check=False,
    )


def _security(unit: Path) -> tuple[int, float]:
    done = subprocess.run(
        [_require("systemd-analyze"), "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = EXPOSURE.search(done.stdout)
    assert match, done.stdout[-500:] + done.stderr
    return done.returncode, float(match.group(1))


class TestUnits:
    @pytest.mark.parametrize("name", UNITS)
    def test_unit_verifies_without_a_single_warning(self, tmp_path: Path, name: str) -> None:
        """systemd-analyze verify exits 0 and prints nothing on stderr (warnings fail too)."""
        staged = _stage_units(tmp_path)
        done = _verify(staged, name)
        assert (done.returncode, done.stderr) == (0, "")

    def test_a_typo_in_a_unit_is_caught(self, tmp_path: Path) -> None:
        """The check is not blind: an unknown key (which verify still exits 0 for) shows on stderr."""
        staged = _stage_units(tmp_path, edit=("robotpm-agent.service", "WatchdogSecc=30s"))
        done = _verify(staged, "robotpm-agent.service")
        assert done.returncode == 0  # the exit code alone would miss it
        assert "WatchdogSecc" in done.stderr

    def test_agent_exposure_is_at_most_two(self, tmp_path: Path) -> None:
        """systemd-analyze security rates the agent unit 2.0 or better, and the threshold check passes."""
        returncode, exposure = _security(_stage_units(tmp_path) / "robotpm-agent.service")
        assert returncode == 0
        assert exposure <= 2.0

    def test_a_naive_unit_fails_the_same_exposure_check(self, tmp_path: Path) -> None:
        """The same command rejects an unhardened unit, so a regression in ours would show."""
        naive = tmp_path / "naive.service"
        naive.write_text("[Service]\nExecStart=/bin/true\nRestart=always\n")
        returncode, exposure = _security(naive)
        assert returncode != 0
        assert exposure > 9.0

    def test_trainer_unit_is_hardened_too(self, tmp_path: Path) -> None:
        """The retraining service also scores in the OK band (it needs network for --db)."""
        _, exposure = _security(_stage_units(tmp_path) / "robotpm-trainer.service")
        assert exposure <= 2.0

    def test_agent_unit_keeps_the_promised_settings(self) -> None:
        """Type=notify with a watchdog, a dynamic user, state under /var/lib, the prod config."""
        settings = _settings(UNIT_FILES["robotpm-agent.service"])
        assert settings["Type"] == ["notify"]
        assert settings["WatchdogSec"] == ["30s"]
        assert settings["DynamicUser"] == ["yes"]
        assert settings["StateDirectory"] == ["robotpm-agent"]
        assert settings["ProtectSystem"] == ["strict"]
        assert settings["ExecStart"] == [
            "/opt/robotpm/bin/robotpm-agent run --config /etc/robotpm/config.toml --profile prod"
        ]
        # the working directory is the runtime directory, created empty and read-only
        assert settings["WorkingDirectory"] == ["/run/robotpm-agent"]
        assert settings["RuntimeDirectory"] == ["robotpm-agent"]
        assert settings["RuntimeDirectoryMode"] == ["0500"]
        # a bounded open-file limit of its own, not the inherited default (1024), with room for the
        # files eight streams may hold open by default and the rest of the agent
        assert settings["LimitNOFILE"] == ["4096"]
        assert 8 * IngestConfig.model_fields["max_open_files"].default + limits.RESERVE <= 4096
        # the agent's own stop budget ends well before systemd's SIGKILL
        stop_budget = AgentConfig.model_fields["stop_timeout_s"].default
        assert settings["TimeoutStopSec"] == ["30s"]
        assert stop_budget + 10 <= 30

    def test_timer_starts_the_trainer_service(self) -> None:
        """The timer runs the oneshot trainer nightly and catches up on missed runs."""
        timer = _settings(UNIT_FILES["robotpm-trainer.timer"])
        service = _settings(UNIT_FILES["robotpm-trainer.service"])
        assert timer["Unit"] == ["robotpm-trainer.service"]
        assert timer["Persistent"] == ["true"]
        assert timer["OnCalendar"]
        assert service["Type"] == ["oneshot"]
        assert service["ExecStart"][0].startswith(
            "/opt/robotpm/bin/robotpm-train --config /etc/robotpm/config.toml --profile prod --db "
        )


def _settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture(name="notify_socket")
def _notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


class TestNotifier:
    def test_notifications_arrive_as_datagrams(
        self, tmp_path: Path, notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ready, status, watchdog, extend_timeout and stopping each send one datagram in systemd's format."""
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        notifier = Notifier.from_env()
        try:
            assert notifier.ready("scoring 1 stream")
            assert notifier.status("model 3 live")
            assert notifier.watchdog()
            assert notifier.extend_timeout(5_000_000)
            assert notifier.stopping()
        finally:
            notifier.close()
        received = [notify_socket.recv(4096) for _ in range(5)]
        assert received == [
            b"READY=1\nSTATUS=scoring 1 stream",
            b"STATUS=model 3 live",
            b"WATCHDOG=1",
            b"EXTEND_TIMEOUT_USEC=5000000",
            b"STOPPING=1",
        ]

    def test_abstract_namespace_socket(self) -> None:
        """A NOTIFY_SOCKET starting with @ names an abstract socket (as systemd uses)."""
        name = f"robotpm-test-{os.getpid()}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.watchdog()
            assert sock.recv(64) == b"WATCHDOG=1"
        finally:
            notifier.close()
            sock.close()

    def test_without_notify_socket_everything_is_a_no_op(self) -> None:
        """Outside systemd nothing is sent and nothing fails."""
        notifier = Notifier.from_env({})
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.watchdog_interval_s is None

    def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid(self) -> None:
        """WATCHDOG_USEC=2000000 means ping every second; a WATCHDOG_PID of another process disables it."""
        env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "2000000"}
        assert Notifier.from_env(env).watchdog_interval_s == 1.0
        assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 1.0
        assert Notifier.from_env({**env, "WATCHDOG_PID": "1"}).watchdog_interval_s is None
        assert Notifier.from_env({**env, "WATCHDOG_USEC": "junk"}).watchdog_interval_s is None

    def test_a_vanished_socket_is_reported_not_raised(self, tmp_path: Path) -> None:
        """If systemd's socket is gone, notify returns False instead of crashing the daemon."""
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
        try:
            assert notifier.enabled
            assert notifier.watchdog() is False
        finally:
            notifier.close()


def _agent_config(tmp_path: Path, broker_port: int) -> Path:
    (tmp_path / "logs").mkdir()
    write_linear_model(tmp_path / "bundled", version=1)
    config = tmp_path / "config.toml"
    config.write_text(
        agent_config(
            port=broker_port,
            robot_id="r1",
            site="lab",
            heartbeat_interval_s=3600,
            ingest={"watch": "poll", "poll_interval_s": 0.05},
        )
    )
    return config


@pytest.mark.mosquitto
def test_agent_process_notifies_ready_feeds_the_watchdog_and_says_stopping(
    tmp_path: Path, broker: Broker, notify_socket: socket.socket
) -> None:
    """robotpm-agent under a fake systemd: READY=1 after the model loads, pings ≤ 1 s apart, STOPPING=1.

    WATCHDOG_USEC=2 s asks for a ping at least every second; SIGTERM must bring STOPPING=1 and exit 0.
    """
    config = _agent_config(tmp_path, broker.port)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": "2000000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    received: list[tuple[float, bytes]] = []
    try:
        notify_socket.settimeout(0.2)
        deadline = time.monotonic() + 30
        # run for 3 s after READY, collecting every datagram
        ready_at: float | None = None
        while time.monotonic() < deadline and (ready_at is None or time.monotonic() < ready_at + 3.0):
            if proc.poll() is not None:
                break
            try:
                data = notify_socket.recv(4096)
            except TimeoutError:
                continue
            received.append((time.monotonic(), data))
            if data.startswith(b"READY=1") and ready_at is None:
                ready_at = time.monotonic()
        terminated_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        notify_socket.settimeout(1.0)
        try:
            while True:
                received.append((time.monotonic(), notify_socket.recv(4096)))
        except TimeoutError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    messages = [data for _, data in received]
    assert proc.returncode == 0, err.decode()[-2000:]
    assert ready_at is not None, messages
    first_ready = next(i for i, m in enumerate(messages) if m.startswith(b"READY=1"))
    assert any(m.startswith(b"STATUS=model") for m in messages[:first_ready])  # model loaded first
    pings = [t for t, m in received if m == b"WATCHDOG=1" and t >= ready_at]
    assert len(pings) >= 3
    gaps = [b - a for a, b in zip([ready_at, *pings], pings, strict=False)]
    assert max(gaps) <= 1.0 + 0.25  # half of WATCHDOG_USEC, with scheduling slack
    assert any(m.startswith(b"STOPPING=1") for t, m in received if t >= terminated_at), messages[-5:]
    assert not any(m.startswith(b"STOPPING=1") for t, m in received if t < terminated_at)
