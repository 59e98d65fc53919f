"""Secrets never leave: not in log lines, tracebacks, stderr or state files, and never in clear on the wire.

The agent and its tools are run as subprocesses with secrets configured (an MQTT
credentials file, a model URL with ``user:password@`` and ``?token=``), driven into
the paths that log them (a fetch that fails on a full store; a logged exception and an
uncaught crash in both renderers), and everything they wrote is searched for the
secret strings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest
import structlog

from agent.config import MqttConfig, load_agent_config
from agent.contract.announcement import ModelAnnouncement
from agent.contract.errors import ConfigError
from agent.contract.topics import model_announcements
from agent.logs import MASK, redact_secrets, redact_text, register_secret
from agent.publish.mqtt import MqttTransport
from agent.seams import SystemClock
from tests.agent_config import agent_config
from tests.agent_process import spawn_agent
from tests.models import write_linear_model
from tests.mosquitto import Broker

REPO = Path(__file__).resolve().parent.parent
MQTT_PASSWORD = "mqtt-Pa55-5ecret"
URL_PASSWORD = "url-Pa55-5ecret"
URL_TOKEN = "T0ken-5ecret-77"
SECRETS = (MQTT_PASSWORD, URL_PASSWORD, URL_TOKEN)
SECRET_URL = f"http://fetcher:{URL_PASSWORD}@127.0.0.1:9/bundles/test-linear-v9.tar?token={URL_TOKEN}&x=1"


def leaks(text: str | bytes) -> list[str]:
    """The secrets found in `text`."""
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return [s for s in SECRETS if s in body]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOTPM")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class TestRedaction:
    @pytest.mark.parametrize(
        ("text", "kept"),
        [
            (f"GET {SECRET_URL}", "GET http://***@127.0.0.1:9/bundles/test-linear-v9.tar?token=***&x=1"),
            ("mqtts://robot:hunter22@broker:8883", "mqtts://***@broker:8883"),
            ("Authorization: Bearer abc.def.ghi-jkl", "Authorization: ***"),
            ("headers {'authorization': 'Basic dXNlcjpwYXNz'}", "headers {'authorization': '***'}"),
            ("login password=hunter22 failed", "login password=*** failed"),
            ('{"api_key": "k-123456", "n": 3}', '{"api_key": "***", "n": 3}'),
            ("X-Amz-Signature=abcd0123&X-Amz-Credential=AKIA/x", "X-Amz-Signature=***&X-Amz-Credential=***"),
            ("tokens=5 session_present=True", "tokens=5 session_present=True"),
        ],
    )
    def test_secrets_in_free_text_are_masked_and_the_rest_kept(self, text: str, kept: str) -> None:
        """URL user info, secret parameters and authorization values become *** and nothing else changes."""
        assert kept == redact_text(text)

    def test_every_key_and_nested_value_of_an_event_is_redacted(self) -> None:
        """Secret-named keys are masked whole at any depth; other strings are searched; paths kept."""
        register_secret("registered-Pa55")
        event = redact_secrets(
            None,
            "info",
            {
                "event": f"fetch {SECRET_URL}",
                "password": "plain",
                "credentials_file": "/run/credentials/mqtt",
                "nested": {"Authorization": "Bearer zzzzzzz", "items": [{"token": 1}, "registered-Pa55 x"]},
                "count": 3,
            },
        )
        assert leaks(json.dumps(event)) == []
        assert event["password"] == MASK
        assert event["credentials_file"] == "/run/credentials/mqtt"
        assert event["nested"] == {"Authorization": MASK, "items": [{"token": MASK}, f"{MASK} x"]}
        assert event["count"] == 3

    @pytest.mark.parametrize("fmt", ["json", "console"])
    def test_a_logged_exception_shows_no_locals_and_no_secret_in_either_renderer(self, fmt: str) -> None:
        """log.exception and an uncaught crash, in a subprocess: the frames are there, the secrets are not."""
        program = f"""
import structlog
from agent.logs import configure_logging
configure_logging("info", {fmt!r})
log = structlog.get_logger("robotpm.test")

def fetch(url):
    mqtt_password = {MQTT_PASSWORD!r}
    raise ConnectionError("cannot fetch " + url)

try:
    fetch({SECRET_URL!r})
except ConnectionError:
    log.exception("fetch_crashed")
fetch({SECRET_URL!r})
"""
        command = [sys.executable, "-c", program]
        result = subprocess.run(command, capture_output=True, cwd=REPO, env=_env(), timeout=60, check=False)
        output = result.stdout.decode() + result.stderr.decode()
        assert 1 == result.returncode
        assert [] == leaks(output), output
        assert 1 == output.count("fetch_crashed")
        assert "uncaught_exception" in output
        assert output.count("ConnectionError") >= 2, "the exception itself is still reported"
        assert "http://***@127.0.0.1:9/bundles" in output


@pytest.fixture(name="full_store")
def _full_store(tmp_path: Path) -> Iterator[Path]:
    """A model store on a real tmpfs with no inode left: creating the download directory fails."""
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=2", "tmpfs", str(store)], check=True)
    try:
        (store / ".filler").touch()  # the second and last inode
        yield store
    finally:
        subprocess.run(["umount", str(store)], check=True)


class TestAgentOutput:
    def test_an_agent_run_with_secrets_configured_writes_none_of_them_anywhere(
        self, tmp_path: Path, broker: Broker, full_store: Path
    ) -> None:
        """Run, status, check and robotpm-alerts with secrets configured: no secret in any output or file.

        The agent logs in with a credentials file (no TLS: the broker is on loopback), follows a model
        channel whose retained announcement names a URL with a password and a token, and its fetch
        fails on the full store: once a crash whose logged traceback showed the announcement in the
        frame's locals, now a reported failure naming the URL (its secrets masked).
        """
        credentials = tmp_path / "mqtt-credentials"
        credentials.write_text(f"robot:{MQTT_PASSWORD}\n")
        write_linear_model(tmp_path / "bundled")
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "a.csv").write_text("ts,J1,T1\n1.0,0.1,20.0\nnot,a,line\n")
        config = tmp_path / "config.toml"
        config.write_text(
            agent_config(
                port=broker.port,
                heartbeat_interval_s=0.5,
                model={"directory": full_store, "channel": "stable", "allow_http": True},
                mqtt={"credentials_file": credentials},
            )
        )
        announcement = ModelAnnouncement(
            model_id="test-linear",
            version=9,
            channel="stable",
            url=SECRET_URL,
            sha256="0" * 64,
            length=1000,
            published_at=datetime.now(timezone.utc),
        )
        mqtt_publish.single(
            model_announcements("stable"),
            announcement.to_json(),
            qos=1,
            retain=True,
            hostname="127.0.0.1",
            port=broker.port,
        )
        agent_out = tmp_path / "agent.out"
        process = spawn_agent(config, agent_out)
        try:
            deadline = time.monotonic() + 60
            while not re.search(rb"model_fetch_(crashed|failed)", agent_out.read_bytes()):
                assert process.poll() is None, agent_out.read_text()
                assert time.monotonic() < deadline, agent_out.read_text()
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert 0 == process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        run_output = agent_out.read_text()
        assert "No space left on device" in run_output, "the failure and its cause are still reported"
        assert "127.0.0.1:9/bundles/test-linear-v9.tar" in run_output, "the URL was logged, masked"

        outputs = {"run": run_output}
        for command in (["status"], ["check"]):
            done = subprocess.run(
                [sys.executable, "-m", "agent.cli", *command, "--config", str(config)],
                capture_output=True,
                cwd=REPO,
                env=_env(),
                timeout=60,
                check=False,
            )
            outputs[command[0]] = done.stdout.decode() + done.stderr.decode()
        alerts = subprocess.run(
            [sys.executable, "-m", "agent.subscriber.cli", "--config", str(config), "--timeout", "1"],
            capture_output=True,
            cwd=REPO,
            env=_env(),
            timeout=60,
            check=False,
        )
        outputs["robotpm-alerts"] = alerts.stdout.decode() + alerts.stderr.decode()
        assert 0 == alerts.returncode, outputs["robotpm-alerts"]
        for name, text in outputs.items():
            assert [] == leaks(text), f"{name} leaked: {text}"
        state_files = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
        assert any(p.name == "quarantine.jsonl" for p in state_files)
        for path in state_files:
            assert [] == leaks(path.read_bytes()), f"{path} holds a secret"


class TestPlaintextCredentials:
    def _config(self, tmp_path: Path, profile_mqtt: str, host: str = "broker.example") -> Path:
        credentials = tmp_path / "mqtt-credentials"
        credentials.write_text(f"robot:{MQTT_PASSWORD}\n")
        write_linear_model(tmp_path / "bundled")
        (tmp_path / "logs").mkdir(exist_ok=True)
        config = tmp_path / "config.toml"
        config.write_text(
            agent_config(port=1883, mqtt={"credentials_file": credentials, "host": host})
            + f"[profiles.prod.agent.mqtt]\n{profile_mqtt}\n"
        )
        return config

    def _check(self, config: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", "check", "--config", str(config), "--profile", "prod"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=_env(),
            timeout=60,
            check=False,
        )

    def test_the_prod_profile_refuses_credentials_without_tls_with_exit_2_naming_the_key(
        self, tmp_path: Path
    ) -> None:
        """robotpm-agent check --profile prod: exit 2, agent.mqtt.tls named, no traceback, no secret."""
        result = self._check(self._config(tmp_path, 'plaintext_credentials = "refuse"'))
        assert 2 == result.returncode, result.stdout + result.stderr
        assert "agent.mqtt.tls" in result.stderr
        assert "Traceback" not in result.stderr
        assert [] == leaks(result.stdout + result.stderr)

    def test_a_broker_on_loopback_is_exempt_nothing_leaves_the_machine(self, tmp_path: Path) -> None:
        """A local bridge on 127.0.0.1 with the refusal on: accepted (the password never leaves the host)."""
        config = self._config(tmp_path, 'plaintext_credentials = "refuse"', host="127.0.0.1")
        result = self._check(config)
        assert 0 == result.returncode, result.stdout + result.stderr

    def _transport(self, mqtt: MqttConfig) -> MqttTransport:
        return MqttTransport(
            mqtt,
            robot_id="r",
            site="s",
            agent_version="0",
            clock=SystemClock(),
            environ={"ROBOTPM_MQTT_USERNAME": "robot", "ROBOTPM_MQTT_PASSWORD": MQTT_PASSWORD},
        )

    def test_credentials_from_the_environment_without_tls_are_refused_when_the_transport_starts(self) -> None:
        """Environment credentials are known only at run time: the transport refuses them the same way."""
        with pytest.raises(ConfigError) as info:
            self._transport(MqttConfig(host="broker.example", plaintext_credentials="refuse"))
        assert "agent.mqtt.tls" == info.value.key

    def test_credentials_without_tls_warn_by_default_and_not_for_loopback(self) -> None:
        """The dev default warns (mqtt_credentials_without_tls) for a remote broker; loopback is quiet."""
        with structlog.testing.capture_logs() as logs:
            self._transport(MqttConfig(host="broker.example"))
        assert ["mqtt_credentials_without_tls"] == [e["event"] for e in logs]
        with structlog.testing.capture_logs() as logs:
            self._transport(MqttConfig(host="::1"))
            self._transport(MqttConfig(host="localhost"))
        assert [] == [e["event"] for e in logs]

    def test_the_shipped_prod_profile_turns_on_tls_signatures_and_the_refusal(self) -> None:
        """The shipped prod profile: TLS to the broker, signed models only, plaintext credentials refused."""
        prod = load_agent_config(REPO / "config.toml", "prod", environ={})
        assert prod.mqtt.tls is not None
        assert "refuse" == prod.mqtt.plaintext_credentials
        assert prod.model.trusted_keys is not None
        assert prod.model.require_signature
        dev = load_agent_config(REPO / "config.toml", "dev", environ={})
        assert (None, "warn") == (dev.mqtt.tls, dev.mqtt.plaintext_credentials)
