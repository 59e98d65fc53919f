"""Configuration: profiles, environment overrides, relative paths, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_agent_config
from agent.contract.configfile import load_document
from agent.contract.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

MINIMAL = """
[robotpm]
profile = "dev"

[agent]
robot_id = "r1"
state_dir = "state"
[agent.model]
directory = "models"
[[agent.streams]]
name = "arm1"
directory = "logs"
[agent.streams.channels]
A = "a"

[profiles.dev.agent]
site = "dev-site"
[profiles.prod.agent]
site = "prod-site"
[profiles.prod.agent.mqtt]
port = 8883
"""


def _agent_check(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``robotpm-agent check --config config_file *args`` run as the operator would, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", "--config", str(config_file), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


@pytest.fixture(name="config_file")
def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(MINIMAL)
    return path


class TestLoading:
    def test_the_shipped_config_is_valid_in_every_profile(self) -> None:
        """config.toml at the repo root loads under dev, test and prod."""
        for profile in ("dev", "test", "prod"):
            config = load_agent_config(REPO / "config.toml", profile, environ={})
            assert config.streams

    def test_profile_in_file_applies_and_explicit_profile_wins(self, config_file: Path) -> None:
        """robotpm.profile selects dev; --profile prod overrides it, merging nested tables."""
        assert "dev-site" == load_agent_config(config_file, environ={}).site
        prod = load_agent_config(config_file, "prod", environ={})
        assert ("prod-site", 8883, "127.0.0.1") == (prod.site, prod.mqtt.port, prod.mqtt.host)

    def test_environment_overrides_win_over_file_and_profile(self, config_file: Path) -> None:
        """ROBOTPM__AGENT__MQTT__PORT sets agent.mqtt.port, typed as a TOML literal."""
        environ = {
            "ROBOTPM__AGENT__MQTT__PORT": "1999",
            "ROBOTPM_PROFILE": "prod",
            "ROBOTPM__AGENT__SITE": "env-site",
        }
        config = load_agent_config(config_file, environ=environ)
        assert (1999, "env-site") == (config.mqtt.port, config.site)

    def test_relative_paths_resolve_against_the_config_file(self, config_file: Path) -> None:
        """state_dir = "state" means <dir of config.toml>/state, wherever the program runs."""
        config = load_agent_config(config_file, environ={})
        assert config_file.parent / "state" == config.state_dir
        assert config_file.parent / "logs" == config.streams[0].directory


class TestErrors:
    @pytest.mark.parametrize(
        ("edit", "key", "problem"),
        [
            (("port = 8883", 'port = "eighty"'), "agent.mqtt.port", "valid integer"),
            (('robot_id = "r1"', 'robot_id = "r 1"'), "agent.robot_id", "letters, digits"),
            (('name = "arm1"', 'name = "arm1"\ncolour = "red"'), "agent.streams.0.colour", "unknown key"),
            (('[agent.model]\ndirectory = "models"', ""), "agent.model", "required"),
            (
                (
                    '[agent.model]\ndirectory = "models"',
                    '[agent.ingest]\nmax_open_files = 2\n[agent.model]\ndirectory = "models"',
                ),
                "agent.ingest.max_open_files",
                "greater than or equal to 4",
            ),
        ],
    )
    def test_a_bad_value_is_reported_with_file_key_and_problem(
        self, config_file: Path, edit: tuple[str, str], key: str, problem: str
    ) -> None:
        """The error names the file, the dotted key and what is wrong."""
        config_file.write_text(MINIMAL.replace(*edit))
        with pytest.raises(ConfigError) as info:
            load_agent_config(config_file, "prod", environ={})
        assert key == info.value.key
        assert problem in info.value.problem
        assert str(config_file) in str(info.value)

    def test_toml_syntax_errors_and_missing_files_are_config_errors(self, tmp_path: Path) -> None:
        """Broken TOML and an absent file both raise ConfigError naming the file."""
        broken = tmp_path / "broken.toml"
        broken.write_text("[agent\n")
        with pytest.raises(ConfigError, match=r"broken\.toml"):
            load_document(broken, environ={})
        with pytest.raises(ConfigError, match="no such file"):
            load_document(tmp_path / "absent.toml", environ={})

    def test_unknown_profile_is_refused(self, config_file: Path) -> None:
        """Asking for a profile the file lacks lists the ones it has."""
        with pytest.raises(ConfigError, match="dev"):
            load_agent_config(config_file, "staging", environ={})

    def test_agent_cli_exits_2_naming_the_key_on_bad_config(self, config_file: Path) -> None:
        """robotpm-agent check with a bad value exits with code 2 and names file and key on stderr."""
        config_file.write_text(MINIMAL.replace("port = 8883", "port = 70000"))
        result = _agent_check(config_file, "--profile", "prod")
        assert 2 == result.returncode
        assert "agent.mqtt.port" in result.stderr
        assert str(config_file) in result.stderr
        assert "Traceback" not in result.stderr

    def test_agent_cli_exits_2_when_a_log_directory_is_missing(self, config_file: Path) -> None:
        """A stream directory that does not exist is a configuration error, not a traceback."""
        result = _agent_check(config_file)
        assert 2 == result.returncode
        assert "agent.streams[0].directory" in result.stderr
        assert "Traceback" not in result.stderr
