"""A model swapped in is on trial: if the agent dies before it is confirmed, the previous one serves next.

The crash is a real agent subprocess SIGKILLed right after its swap; the restart is a real
process too. No broker is needed (the agent degrades without one, and this is about models).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.crashguard import boot_id
from agent.models.lifecycle import TRIAL_FILE
from agent.models.store import REFUSED_FILE
from tests.agent_config import agent_config
from tests.agent_process import spawn_agent
from tests.models import write_linear_model
from tests.test_daemon import PROFILE, Harness, lines, make_config, write
from tests.test_model_probation import into_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_events(output: Path) -> list[dict[str, Any]]:
    """The agent's JSON log lines (other output, e.g. a traceback, is skipped)."""
    events = []
    for line in output.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.append(record)
    return events


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(name="processes")
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_an_agent_killed_right_after_a_swap_marks_that_model_bad_and_starts_on_the_previous_one(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """v2 goes live, SIGKILL before it scored confirm_windows; the next start serves v1 and says why."""
    (tmp_path / "logs").mkdir()
    write_linear_model(tmp_path / "bundled", version=1)
    config = tmp_path / "config.toml"
    config.write_text(
        agent_config(
            port=free_port(),
            model={"probation_windows": 0, "confirm_windows": 1000, "check_interval_s": 0.05},
            ingest={"watch": "poll", "poll_interval_s": 0.02},
        )
    )
    output = tmp_path / "agent.out"
    state = tmp_path / "state"

    def started(count: int) -> bool:
        return len([e for e in log_events(output) if e.get("event") == "agent_started"]) >= count

    first = spawn_agent(config, output)
    processes.append(first)
    wait_until(lambda: started(1), "the first start")
    staging = tmp_path / "staging-v2"
    write_linear_model(staging, version=2)
    (tmp_path / "store").mkdir(exist_ok=True)
    staging.rename(tmp_path / "store" / "v2")
    wait_until(
        lambda: any(
            e.get("event") == "model_live" and e.get("model") == "test-linear@2" for e in log_events(output)
        ),
        "v2 live",
    )
    assert (state / TRIAL_FILE).exists(), "the trial is on disk before the first window"
    first.send_signal(signal.SIGKILL)
    assert -signal.SIGKILL == first.wait(timeout=30)

    second = spawn_agent(config, output)
    processes.append(second)
    wait_until(lambda: started(2), "the second start")
    events = log_events(output)
    last_start = [e for e in events if e.get("event") == "agent_started"][-1]
    assert "test-linear@1" == last_start["model"]
    marked = [e for e in events if e.get("event") == "model_marked_bad"]
    assert ["test-linear@2"] == [e["model"] for e in marked]
    assert "took the agent down" in marked[0]["reason"]
    assert not (state / TRIAL_FILE).exists()
    refused = json.loads((tmp_path / "store" / REFUSED_FILE).read_text())
    assert any("took the agent down" in str(v) for v in refused.values()), "remembered on disk"
    second.send_signal(signal.SIGTERM)
    assert 0 == second.wait(timeout=60)
    third = spawn_agent(config, output)  # remembered on disk: v2 stays refused on every later start
    processes.append(third)
    wait_until(lambda: started(3), "the third start")
    assert (
        "test-linear@1" == [e for e in log_events(output) if e.get("event") == "agent_started"][-1]["model"]
    )
    third.send_signal(signal.SIGTERM)
    assert 0 == third.wait(timeout=60)


def on_trial_with_v2(tmp_path: Path, confirm_windows: int) -> tuple[AgentConfig, Harness]:
    """An in-process daemon that has just swapped store model v2 in; its trial is on disk."""
    config = make_config(tmp_path)
    model = config.model.model_copy(update={"confirm_windows": confirm_windows})
    config = config.model_copy(update={"model": model})
    harness = Harness(config)
    try:
        into_store(config, "v2", lambda d: write_linear_model(d, version=2))
        harness.settle_until(lambda: harness.daemon.slot.current.manifest.version == 2)
        assert (config.state_dir / TRIAL_FILE).exists()
    except BaseException:
        harness.close()
        raise
    return config, harness


def test_a_clean_stop_right_after_a_swap_ends_the_trial_without_a_verdict(tmp_path: Path) -> None:
    """A stop is not a crash: after it, v2 (swapped in, unconfirmed) starts again."""
    config, harness = on_trial_with_v2(tmp_path, confirm_windows=1000)
    harness.close()
    assert not (config.state_dir / TRIAL_FILE).exists()
    with closing(Harness(config)) as again:
        assert 2 == again.daemon.slot.current.manifest.version


def test_a_model_is_confirmed_once_it_scored_confirm_windows(tmp_path: Path) -> None:
    """After confirm_windows windows with v2, its trial ends: a later crash would not blame it."""
    config, harness = on_trial_with_v2(tmp_path, confirm_windows=5)
    try:
        write(config, lines(0, PROFILE))
        harness.settle_until(lambda: not (config.state_dir / TRIAL_FILE).exists())
        harness.daemon.models.note_crash()  # even a crash now leaves no trial behind
    finally:
        harness.close()
    assert not (config.state_dir / TRIAL_FILE).exists()


def test_a_trial_left_by_another_boot_blames_no_model(tmp_path: Path) -> None:
    """A power cut right after a swap is not the model's fault: v2, on trial then, starts again."""
    config = make_config(tmp_path)
    config = config.model_copy(update={"model": config.model.model_copy(update={"confirm_windows": 1000})})
    into_store(config, "v2", lambda d: write_linear_model(d, version=2))
    config.state_dir.mkdir(parents=True)
    manifest = json.loads((config.model.directory / "v2" / "manifest.json").read_text())
    trial = {"model": "test-linear@2", "version": 2, "sha256": manifest["sha256"], "boot": "another-boot"}
    (config.state_dir / TRIAL_FILE).write_text(json.dumps(trial))
    with closing(Harness(config)) as harness:
        assert 2 == harness.daemon.slot.current.manifest.version
        assert not (config.state_dir / TRIAL_FILE).exists()


def test_a_trial_left_by_this_boot_marks_the_model_bad(tmp_path: Path) -> None:
    """The same file from this boot: v2 is refused with the reason, bundled v1 serves."""
    config = make_config(tmp_path)
    into_store(config, "v2", lambda d: write_linear_model(d, version=2))
    config.state_dir.mkdir(parents=True)
    manifest = json.loads((config.model.directory / "v2" / "manifest.json").read_text())
    trial = {"model": "test-linear@2", "version": 2, "sha256": manifest["sha256"], "boot": boot_id()}
    (config.state_dir / TRIAL_FILE).write_text(json.dumps(trial))
    with closing(Harness(config)) as harness:
        assert 1 == harness.daemon.slot.current.manifest.version
        harness.settle(30)
        rejected = [m for m in harness.transport.messages("model") if b'"rejected"' in m.payload]
        assert 1 == len(rejected)
        assert b"took the agent down" in rejected[0].payload
