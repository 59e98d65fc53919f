"""Fleet rollout: publishing over TLS with credentials under a broker ACL, rollback as a new version,
and who runs what (``rollout-status``), against real mosquitto brokers and real agents.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract.manifest import MODEL_FILE, ModelManifest
from agent.contract.topics import model_announcements
from agent.models.slot import ModelSlot
from tests.fake_broker import BrokerPool
from tests.model_server import (  # noqa: F401 (pytest fixtures: pki, keys)
    ModelServer,
    Pki,
    keys_fixture,
    mqtt_publish,
    pki_fixture,
    wait_until,
)
from tests.models import write_linear_model
from tests.mosquitto import Broker
from tests.signing_keys import FleetKeys
from tests.test_model_fetch import CHANNEL, fetcher_for, model_config, signed_version
from trainer.broker import BrokerError, BrokerSettings
from trainer.cli import main as train_main
from trainer.publish import index_path, publish, rollback_to
from trainer.registry import Registry
from trainer.rollout import collect
from trainer.signing import ReleaseSigner, sign_model_dir

TRAINER, TRAINER_PASSWORD = "robotpm-trainer", "trainer-pw"
ROBOT, ROBOT_PASSWORD = "r1", "robot-pw"

ACL = """# robotpm: only the trainer announces models; each robot writes its own subtree.
user robotpm-trainer
topic write robotpm/v1/models/#
topic read robotpm/v1/+/+/#

pattern read robotpm/v1/models/#
pattern write robotpm/v1/+/%u/#
"""


@pytest.fixture(name="secure_broker")
def _secure_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    """TLS, no anonymous clients, a password per user and the ACL the docs give."""
    work = tmp_path / "secure"
    work.mkdir()
    passwords = work / "passwords"
    passwords.touch()
    for user, password in ((TRAINER, TRAINER_PASSWORD), (ROBOT, ROBOT_PASSWORD)):
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwords), user, password], check=True, capture_output=True
        )
    (work / "acl").write_text(ACL)
    pool = BrokerPool(tmp_path / "brokers")
    broker = pool.make(
        "secure",
        f"cafile {pki.ca}\ncertfile {pki.cert}\nkeyfile {pki.key}\ntls_version tlsv1.2\n"
        f"allow_anonymous false\npassword_file {passwords}\nacl_file {work / 'acl'}\n",
    ).start()
    yield broker
    pool.close()


def credentials(tmp_path: Path, user: str, password: str) -> Path:
    path = tmp_path / f"{user}.credentials"
    path.write_text(f"{user}:{password}\n")
    path.chmod(0o600)
    return path


def retained(
    port: int, topic: str, *, pki: Pki | None, user: str | None, password: str | None
) -> list[bytes]:
    """The retained payloads a fresh subscriber gets on `topic` (there is one per topic)."""
    got: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    if pki is not None:
        client.tls_set_context(ssl.create_default_context(cafile=str(pki.ca)))
    if user is not None:
        client.username_pw_set(user, password)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, m: got.append(m.payload) if m.retain else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        wait_until(lambda: bool(got))  # one retained message per topic: the first is the one
    finally:
        client.disconnect()
        client.loop_stop()
    return got


class TestPublishOverTls:
    def test_the_trainer_announces_over_tls_with_credentials_and_a_robot_cannot(
        self, tmp_path: Path, secure_broker: Broker, pki: Pki, keys: FleetKeys
    ) -> None:
        """Publish with TLS and credentials reaches the robots; a robot's own fake announcement is dropped."""
        version_dir = signed_version(tmp_path, keys, 2)
        argv = [
            "publish",
            str(version_dir),
            "--base-url",
            "https://models.example",
            "--out",
            str(tmp_path / "web"),
        ]
        argv += [
            "--key",
            str(keys.private),
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            str(secure_broker.port),
        ]
        argv += ["--mqtt-ca-file", str(pki.ca)]
        argv += ["--mqtt-credentials", str(credentials(tmp_path, TRAINER, TRAINER_PASSWORD))]
        assert 0 == train_main(argv)
        topic = model_announcements(CHANNEL)
        mqtt_publish(
            secure_broker.port, topic, b"a robot's fake", ca=pki.ca, user=ROBOT, password=ROBOT_PASSWORD
        )
        [payload] = retained(secure_broker.port, topic, pki=pki, user=ROBOT, password=ROBOT_PASSWORD)
        assert index_path(tmp_path / "web", CHANNEL).read_bytes() == payload

    def test_without_tls_the_trainer_neither_sends_a_password_nor_connects_unless_told(
        self, tmp_path: Path, secure_broker: Broker, capsys: pytest.CaptureFixture[str]
    ) -> None:
        version_dir = tmp_path / "registry" / "v2"
        write_linear_model(version_dir, version=2)
        base = ["publish", str(version_dir), "--base-url", "https://x", "--out", str(tmp_path / "web")]
        base += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(secure_broker.port)]
        creds = credentials(tmp_path, TRAINER, TRAINER_PASSWORD)
        assert 1 == train_main([*base, "--mqtt-credentials", str(creds)])
        assert "never sent over plain TCP" in capsys.readouterr().err
        assert 1 == train_main(base)
        assert "needs TLS" in capsys.readouterr().err
        assert not (tmp_path / "web").exists(), "nothing is written when the broker settings are unsafe"

    def test_wrong_credentials_are_refused_by_the_broker(
        self, tmp_path: Path, secure_broker: Broker, pki: Pki
    ) -> None:
        from trainer.broker import connect

        settings = BrokerSettings(
            "127.0.0.1", secure_broker.port, ca_file=pki.ca, username=TRAINER, password="no"
        )
        with pytest.raises(BrokerError, match="refused the connection"):
            connect(settings, timeout_s=10)


class TestPublishRefuses:
    def test_publish_refuses_another_channel_than_signed_and_a_key_not_certified_for_it(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        """Agents would refuse either; the trainer says so first and writes nothing."""
        from tests.signing_keys import release_key
        from trainer.publish import PublishError

        version_dir = signed_version(tmp_path, keys, 2)
        web = tmp_path / "web"
        with pytest.raises(PublishError, match="signed for channel 'stable', not 'beta'"):
            publish(version_dir, channel="beta", base_url="https://x", webroot=web)
        beta, _ = release_key(tmp_path / "keys", keys.root_private, "beta-key", channels=("beta",))
        with pytest.raises(PublishError, match="'beta-key' is not certified for channel 'stable'"):
            publish(version_dir, channel=None, base_url="https://x", webroot=web, signer=ReleaseSigner(beta))
        assert not web.exists()

    def test_broker_settings_refuse_a_bad_credentials_file_bad_tls_files_and_no_broker(
        self, tmp_path: Path
    ) -> None:
        from trainer.broker import connect

        bad = tmp_path / "credentials"
        bad.write_text("no colon here\n")
        with pytest.raises(BrokerError, match="expected 'username:password'"):
            BrokerSettings.build("127.0.0.1", 1, credentials_file=bad)
        with pytest.raises(BrokerError, match="cannot read the credentials"):
            BrokerSettings.build("127.0.0.1", 1, credentials_file=tmp_path / "missing")
        settings = BrokerSettings.build("127.0.0.1", 1, credentials_file=credentials(tmp_path, "u", "p"))
        assert ("u", "p") == (settings.username, settings.password)
        assert "p" not in repr(settings)
        with pytest.raises(BrokerError, match="cannot load the TLS files"):
            connect(BrokerSettings("127.0.0.1", 1, ca_file=tmp_path / "missing.pem"))
        from tests.mosquitto import free_port

        with pytest.raises(BrokerError, match="cannot connect to the broker"):
            connect(BrokerSettings("127.0.0.1", free_port(), allow_plain=True), timeout_s=5)


class TestRollback:
    def _registry(self, tmp_path: Path, keys: FleetKeys) -> Registry:
        registry = Registry(tmp_path / "models", "test-linear")
        for version, scale in ((1, 1.0), (2, -3.0)):  # v2 is the bad one
            directory = registry.path(version)
            write_linear_model(directory, version=version, scale=scale)
            sign_model_dir(directory, keys.private)
        return registry

    def test_rollback_to_republishes_a_known_good_model_as_a_new_higher_version(
        self, tmp_path: Path, keys: FleetKeys
    ) -> None:
        registry = self._registry(tmp_path, keys)
        directory = rollback_to(registry, 1, signer_key=keys.private)
        manifest = ModelManifest.read(directory)
        assert (3, "1") == (manifest.version, manifest.training["republished_from"])
        assert (registry.path(1) / MODEL_FILE).read_bytes() == (directory / MODEL_FILE).read_bytes()
        assert "fleet" == manifest.signing_key_id

    def test_a_robot_on_the_bad_version_accepts_the_rollback(
        self, tmp_path: Path, keys: FleetKeys, pki: Pki
    ) -> None:
        """The reproduced gap: agents ignore older versions, so a registry rollback changed nothing.

        ``publish --rollback-to 1`` makes v3 = v1's model; a robot running v2 fetches and offers it.
        """
        registry = self._registry(tmp_path, keys)
        webroot = tmp_path / "web"
        webroot.mkdir()
        server = ModelServer(webroot, pki)
        try:
            config = model_config(tmp_path, pki, keys)
            write_linear_model(tmp_path / "bundled", version=1)
            config.directory.mkdir(parents=True)
            (config.directory / "v2").symlink_to(registry.path(2), target_is_directory=True)
            slot = ModelSlot(config)
            assert 2 == slot.load_initial().manifest.version
            argv = ["publish", "--rollback-to", "1", "--registry", str(registry.directory.parent)]
            argv += ["--name", "test-linear", "--base-url", server.base_url, "--out", str(webroot)]
            assert 0 == train_main([*argv, "--key", str(keys.private)])
            payload = index_path(webroot, CHANNEL).read_bytes()
            result = fetcher_for(config).process(payload)
            assert "installed" == result.outcome, result.detail
            candidate = slot.poll()
            assert candidate is not None
            assert 3 == candidate.manifest.version
            assert ModelManifest.read(registry.path(1)).sha256 == candidate.manifest.sha256
        finally:
            server.close()


class TestRolloutStatus:
    def test_rollout_status_says_who_runs_what_who_is_on_probation_and_who_refused_why(
        self, tmp_path: Path, broker: Broker, keys: FleetKeys, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A real agent (r1, v1) and the retained messages of three more robots; --json and the table."""
        from agent.daemon import AgentDaemon
        from tests.test_daemon import make_config

        def send(topic: str, body: dict[str, object], retain: bool = True) -> None:
            mqtt_publish(broker.port, topic, json.dumps(body).encode(), retain=retain)

        version_dir = signed_version(tmp_path, keys, 2)
        plain = BrokerSettings("127.0.0.1", broker.port, allow_plain=True)
        publish(version_dir, channel=CHANNEL, base_url="https://x", webroot=tmp_path / "web",
                signer=ReleaseSigner(keys.private), broker=plain)  # fmt: skip
        base = make_config(tmp_path)
        config = base.model_copy(update={"mqtt": base.mqtt.model_copy(update={"port": broker.port})})
        on_broker = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--mqtt-allow-plain"]
        daemon = AgentDaemon(config)
        daemon.startup()
        try:
            model = {"id": "test-linear", "version": 2}
            active = {
                "schema_version": "1.1",
                "state": "active",
                "channel": CHANNEL,
                "since": "2026-11-30T00:00:00Z",
            }
            send("robotpm/v1/lab/r2/model", {**active, "robot_id": "r2", "site": "lab", "model": model})
            send(
                "robotpm/v1/lab/r3/model",
                {**active, "robot_id": "r3", "site": "lab", "model": {**model, "version": 1}},
            )
            send("robotpm/v1/lab/r3/heartbeat", {"model_candidate": model, "model_events": {"probation": 1}})
            send(
                "robotpm/v1/lab/r4/model",
                {**active, "robot_id": "r4", "site": "lab", "model": {**model, "version": 1}},
            )
            send("robotpm/v1/lab/r4/heartbeat", {"model_candidate": None, "model_events": {"rejected": 1}})
            send("robotpm/v1/other/r9/model", {**active, "channel": "beta", "model": model})
            wait_until(lambda: daemon.transport is not None and daemon.transport.connected)
            for _ in range(100):
                daemon.tick(0.01)
            status = collect(plain, CHANNEL, quiet_s=0.5)
            by_robot = {r.robot: r for r in status.robots}
            assert 2 == status.announced_version
            assert ["r1", "r2", "r3", "r4"] == sorted(by_robot)
            assert ("behind", 1) == (by_robot["r1"].state, by_robot["r1"].version)
            assert "current" == by_robot["r2"].state
            assert ("probation", 2) == (by_robot["r3"].state, by_robot["r3"].candidate_version)
            assert "refused" == by_robot["r4"].state
            assert "rejected" in by_robot["r4"].detail

            done = threading.Event()

            def refuse_live() -> None:  # an event, not retained: seen only while the tool listens
                body = {"state": "rejected", "model": model, "detail": "golden 0: output score = [9.0]"}
                while not done.wait(0.1):
                    send("robotpm/v1/lab/r4/model", body, retain=False)

            sender = threading.Thread(target=refuse_live)
            sender.start()
            argv = ["rollout-status", "--channel", CHANNEL, "--json", "--listen", "2"]
            try:
                assert 0 == train_main([*argv, *on_broker])
            finally:
                done.set()
                sender.join()
            listed = {r["robot"]: r for r in json.loads(_json_block(capsys.readouterr().out))["robots"]}
            assert "golden 0: output score = [9.0]" in listed["r4"]["detail"]
            assert 0 == train_main([*argv[:3], *on_broker])
            table = capsys.readouterr().out
            assert "lab/r3" in table
            assert "probation" in table
        finally:
            daemon.shutdown()


def _json_block(output: str) -> str:
    """The indented JSON document in `output` (the running agent logs to the same stdout)."""
    lines = output.splitlines()
    start = lines.index("{")
    end = len(lines) - 1 - lines[::-1].index("}")
    return "\n".join(lines[start : end + 1])
