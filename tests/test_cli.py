"""robotpm-agent's commands as a technician uses them: clear errors, never a traceback."""

from __future__ import annotations

import subprocess
import sys
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


def test_status_before_any_run_says_the_agent_has_not_run(tmp_path: Path) -> None:
    """The status command on a fresh robot explains that the agent has not run yet, exit 3 (not running)."""
    result = run("status", "--config", str(setup(tmp_path)))
    assert 3 == result.returncode
    assert "the agent has not run with this config" in result.stdout
