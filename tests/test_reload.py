"""SIGHUP on the real agent process: live keys applied, restart keys named, a broken file kept out."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.reload import changed_keys, is_live, merged
from agent.technician.settings import ShelvingConfig
from tests.agent_config import agent_config
from tests.agent_process import spawn_agent
from tests.models import write_linear_model
from tests.mosquitto import free_port


def config_text(*, port: int, policy: dict[str, Any], poll: float, log_file: Path) -> str:
    return (
        agent_config(
            port=port,
            ingest={"watch": "poll", "poll_interval_s": poll},
            policy=policy,
        )
        + f'[agent.logging]\nfile = "{log_file}"\nfile_max_bytes = 4096\nfile_backups = 2\n'
    )


class Agent:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "logs").mkdir()
        write_linear_model(root / "bundled")
        self.config = root / "config.toml"
        self.output = root / "agent.out"
        self.log_file = root / "logfile" / "agent.log"
        self.port = free_port()  # nothing listens: the agent keeps trying, which changes nothing here
        self.write(policy={"on_delay_windows": 2}, poll=0.05)
        self.process = spawn_agent(self.config, self.output)

    def write(self, *, policy: dict[str, Any], poll: float) -> None:
        tmp = self.config.with_suffix(".new")
        tmp.write_text(config_text(port=self.port, policy=policy, poll=poll, log_file=self.log_file))
        tmp.replace(self.config)  # the agent may read it at any moment: it appears whole

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.output.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines():
                if match(line):
                    return line
            assert self.process.poll() is None, (
                f"the agent exited ({self.process.returncode}) waiting for {what}"
            )
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout_s} s:\n{self.output.read_text()[-3000:]}")

    def hup(self) -> None:
        os.kill(self.process.pid, signal.SIGHUP)


@pytest.fixture(name="agent")
def _agent(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(tmp_path)
    try:
        yield agent
    finally:
        if agent.process.poll() is None:
            agent.process.kill()
        agent.process.wait(30)


def test_sighup_applies_live_keys_names_restart_keys_and_keeps_running(agent: Agent) -> None:
    """A changed policy is applied, a changed poll interval needs a restart; the agent lives on."""
    agent.wait_for(lambda line: line.get("event") == "agent_started", "agent_started")
    agent.write(policy={"on_delay_windows": 5, "max_events_per_minute": 30}, poll=0.2)
    agent.hup()
    reloaded = agent.wait_for(lambda line: line.get("event") == "config_reloaded", "config_reloaded")
    assert ["policy.max_events_per_minute", "policy.on_delay_windows"] == reloaded["changed"]
    restart = agent.wait_for(
        lambda line: line.get("event") == "config_restart_needed", "config_restart_needed"
    )
    assert ["ingest.poll_interval_s"] == restart["keys"]
    assert agent.process.poll() is None
    agent.process.terminate()
    assert 0 == agent.process.wait(30)


def test_a_broken_config_on_sighup_keeps_the_old_one_and_says_why(agent: Agent) -> None:
    """An invalid value in the new file: the agent keeps running with the old config and names the key."""
    agent.wait_for(lambda line: line.get("event") == "agent_started", "agent_started")
    agent.write(policy={"on_delay_windows": 0}, poll=0.05)  # on_delay_windows must be >= 1
    agent.hup()
    refused = agent.wait_for(
        lambda line: line.get("event") == "config_reload_refused", "config_reload_refused"
    )
    assert "agent.policy.on_delay_windows" == refused["key"]
    agent.write(policy={"on_delay_windows": 3}, poll=0.05)
    agent.hup()
    reloaded = agent.wait_for(lambda line: line.get("event") == "config_reloaded", "config_reloaded")
    assert ["policy.on_delay_windows"] == reloaded["changed"]
    agent.process.terminate()
    assert 0 == agent.process.wait(30)


def test_the_log_file_gets_every_line_and_rotates_within_its_bound(agent: Agent) -> None:
    """[agent.logging] file holds the same lines as stdout, rotated past file_max_bytes into two backups."""
    agent.wait_for(lambda line: line.get("event") == "agent_started", "agent_started")
    for _ in range(12):  # each reload logs lines; 4 KiB fill quickly
        agent.hup()
        time.sleep(0.05)
    agent.wait_for(
        lambda line: len([x for x in agent.lines() if x.get("event") == "config_reloaded"]) >= 3, "reloads"
    )
    agent.process.terminate()
    assert 0 == agent.process.wait(30)
    files = sorted(p.name for p in agent.log_file.parent.iterdir())
    assert "agent.log" in files
    assert all(p.stat().st_size <= 4096 + 2048 for p in agent.log_file.parent.iterdir())
    assert len(files) <= 3
    logged = [json.loads(line) for line in agent.log_file.read_text().splitlines()]
    assert "agent_stopped" == logged[-1]["event"]


def test_which_keys_are_live() -> None:
    """Policy, journal, shelving, log and metrics keys are live; streams, MQTT and ingest keys are not."""
    assert is_live("policy.on_delay_windows")
    assert is_live("shelving.max_for_s")
    assert is_live("log_level")
    assert not is_live("mqtt.host")
    assert not is_live("streams")
    assert not is_live("model.trusted_keys", trusted_keys_live=False)


def test_a_merged_config_takes_only_the_live_parts(tmp_path: Path) -> None:
    """After a reload the agent runs with the new live values and the old restart-only ones."""
    from agent.config import load_agent_config

    path = tmp_path / "config.toml"
    (tmp_path / "logs").mkdir()
    path.write_text(agent_config(port=1883, ingest={"poll_interval_s": 0.5}))
    old = load_agent_config(path)
    path.write_text(agent_config(port=1884, ingest={"poll_interval_s": 0.5}, policy={"top_features": 2}))
    new = load_agent_config(path).model_copy(update={"shelving": ShelvingConfig(max_for_s=60.0)})
    assert ["mqtt.port", "policy.top_features", "shelving.max_for_s"] == changed_keys(old, new)
    running = merged(old, new)
    assert (1883, 2, 60.0) == (running.mqtt.port, running.policy.top_features, running.shelving.max_for_s)


def test_the_unit_reloads_with_sighup() -> None:
    """Systemctl reload sends SIGHUP to the main process."""
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "robotpm-agent.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit.splitlines()
