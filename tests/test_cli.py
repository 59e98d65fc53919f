"""robotpm-agent's commands as a technician uses them: clear errors, never a traceback."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.agent_config import agent_config
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


def test_status_before_any_run_says_there_is_no_state(tmp_path: Path) -> None:
    """The status command on a fresh robot explains that the agent has not run yet."""
    result = run("status", "--config", str(setup(tmp_path)))
    assert 0 == result.returncode
    assert "no state yet" in result.stdout


def many_streams_state(config: Path, n: int = 3000) -> None:
    """A state file with `n` saved streams: `status` prints far more than a pipe holds (64 KiB)."""
    state = config.parent / "state"
    state.mkdir(exist_ok=True)
    db = sqlite3.connect(state / "agent.db")
    with db:
        db.execute("CREATE TABLE stream_state (stream TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL)")
        position = json.dumps({"pipeline": {"model": "test-linear@1"}, "follower": {"files": ["x" * 300]}})
        db.executemany("INSERT INTO stream_state VALUES (?, ?, 1.0)", ((f"s{i}", position) for i in range(n)))
    db.close()


def test_status_piped_into_head_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """`robotpm-agent status | head -1`: the reader leaves early; no BrokenPipeError, exit 0."""
    config = setup(tmp_path)
    many_streams_state(config)
    command = (
        f"{shlex.quote(sys.executable)} -m agent.cli status --config {shlex.quote(str(config))} | head -1"
    )
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert 1 == len(result.stdout.splitlines())
    assert result.stdout.startswith("stream s0:")
    assert "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr
    assert 0 == result.returncode, result.stderr


def test_run_goes_on_when_its_stdout_is_closed(tmp_path: Path) -> None:
    """The agent's log reader (journald) goes away: logging fails quietly, lines are still scored."""
    config = setup(tmp_path)
    read, write = os.pipe()
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
        cwd=REPO,
        stdout=write,
        stderr=subprocess.PIPE,
    )
    os.close(write)
    os.close(read)  # nobody reads the log any more: the agent's next log line meets a broken pipe
    try:
        (tmp_path / "logs" / "arm1.csv").write_text(
            "ts,J1,T1\n" + "".join(f"{i}.0,0.1,40.0\n" for i in range(40))
        )
        deadline = time.monotonic() + 30.0
        while saved_samples(tmp_path) < 40:
            assert agent.poll() is None, "the agent died"
            assert time.monotonic() < deadline, "the lines were not scored"
            time.sleep(0.1)
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert 0 == agent.returncode
    assert b"Traceback" not in stderr


def saved_samples(root: Path) -> int:
    path = root / "state" / "agent.db"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state FROM stream_state WHERE stream = 'arm1'").fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()
    return int(json.loads(row[0])["pipeline"]["samples_seen"]) if row else 0
