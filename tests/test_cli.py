"""robotpm-agent's commands as a technician uses them: clear errors, never a traceback."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent_config import agent_config
from tests.agent_process import reaped
from tests.agent_runs import saved_samples
from tests.models import write_linear_model

REPO = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


def setup(tmp_path: Path, model: bool = True) -> Path:
    (tmp_path / "logs").mkdir()
    if model:
        write_linear_model(tmp_path / "bundled")
    config = tmp_path / "config.toml"
    config.write_text(
        agent_config(port=1883, robot_id="r1", ingest={"watch": "poll", "poll_interval_s": 0.05})
    )
    return config


def test_check_reports_the_config_and_model_in_use(tmp_path: Path) -> None:
    """The check command validates the config, loads and golden-tests the model, and says which."""
    result = run("check", "--config", str(setup(tmp_path)))
    assert 0 == result.returncode, result.stderr
    assert "model ok: test-linear@1" in result.stdout


def test_a_missing_model_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    """Without a model in the store or bundled directory, the error names the directory."""
    result = run("check", "--config", str(setup(tmp_path, model=False)))
    assert 1 == result.returncode
    assert "bundled" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_before_any_run_says_the_agent_has_not_run(tmp_path: Path) -> None:
    """The status command on a fresh robot explains that the agent has not run yet, exit 3 (not running)."""
    result = run("status", "--config", str(setup(tmp_path)))
    assert 3 == result.returncode
    assert "the agent has not run with this config" in result.stdout


def closed_pipe_run(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The command with its stdout a pipe whose reader has gone (as `… | head -1` once head exits)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", *args],
            cwd=REPO,
            stdout=write,
            stderr=subprocess.PIPE,
            check=False,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("command", ["check", "status", "alerts"])
def test_a_reader_that_went_away_ends_no_command_with_a_traceback(tmp_path: Path, command: str) -> None:
    """Every command writing to a closed pipe exits as it would have, quietly: no BrokenPipeError."""
    config = setup(tmp_path)
    expected = run(command, "--config", str(config)).returncode
    result = closed_pipe_run(command, "--config", str(config))
    assert b"Traceback" not in result.stderr
    assert b"BrokenPipe" not in result.stderr
    assert expected == result.returncode


def test_status_piped_into_head_prints_its_first_line_and_no_traceback(tmp_path: Path) -> None:
    """`robotpm-agent status | head -1` in a real shell: one line, no traceback."""
    config = setup(tmp_path)
    status = shlex.join([sys.executable, "-m", "agent.cli", "status", "--config", str(config)])
    result = subprocess.run(
        ["bash", "-c", f"{status} | head -1"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert 1 == len(result.stdout.splitlines())
    assert "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr


def test_run_goes_on_when_its_stdout_is_closed(tmp_path: Path) -> None:
    """The agent's log reader (journald) goes away: logging fails quietly, lines are still scored."""
    config = setup(tmp_path)
    read, write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
        cwd=REPO,
        stdout=write,
        stderr=subprocess.PIPE,
    )
    with reaped(process) as agent:
        os.close(write)
        os.close(read)  # nobody reads the log any more: the agent's next log line meets a broken pipe
        (tmp_path / "logs" / "arm1.csv").write_text(
            "ts,J1,T1\n" + "".join(f"{i}.0,0.1,40.0\n" for i in range(40))
        )
        deadline = time.monotonic() + 30.0
        while saved_samples(tmp_path / "state") < 40:
            assert agent.poll() is None, "the agent died"
            assert time.monotonic() < deadline, "the lines were not scored"
            time.sleep(0.1)
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    assert 0 == agent.returncode
    assert b"Traceback" not in stderr
