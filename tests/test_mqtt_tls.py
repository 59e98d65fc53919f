"""MQTT over TLS with a CA, server and client certificates generated for the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import MqttConfig, OutboxConfig, TlsConfig
from agent.contract.errors import ConfigError
from agent.contract.topics import RobotTopics
from agent.outbox import Outbox
from agent.publish.delivery import Delivery
from agent.publish.mqtt import MqttTransport, tls_context
from agent.seams import OutboundMessage, SystemClock
from agent.state import StateStore
from tests.fake_broker import BrokerPool, Collector
from tests.mosquitto import Broker

TOPICS = RobotTopics("site1", "robot1")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _builder(
    name: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, *, ca: bool
) -> x509.CertificateBuilder:
    """A certificate for `name`'s `key`, signed by `issuer`, valid from 5 minutes ago for a day."""
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(name, subject, key, ca=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        _builder(name, ca.subject, key, ca=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("broker.robotpm.test"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _issue(
    directory: Path,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    stem: str,
    *,
    server: bool,
) -> tuple[Path, Path]:
    """A certificate for `name` signed by the CA and its key, written as ``stem.pem`` and ``stem.key``."""
    cert, key = _leaf(ca, ca_key, name, server=server)
    return _write_cert(cert, directory / f"{stem}.pem"), _write_key(key, directory / f"{stem}.key")


def _other_ca(directory: Path) -> Path:
    """Somebody else's CA certificate, written as ``other-ca.pem``: one that signed none of ours."""
    other, _ = _ca("Somebody else's CA")
    return _write_cert(other, directory / "other-ca.pem")


@pytest.fixture(name="pki", scope="module")
def _pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("RobotPM test CA")
    server_cert, server_key = _issue(d, ca, ca_key, "broker.robotpm.test", "server", server=True)
    client_cert, client_key = _issue(d, ca, ca_key, "robot1", "client", server=False)
    return Pki(
        ca=_write_cert(ca, d / "ca.pem"),
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        other_ca=_other_ca(d),
    )


@pytest.fixture(name="tls_broker")
def _tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    pool = BrokerPool(tmp_path / "brokers")
    broker = pool.make(
        "tls",
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "require_certificate true\ntls_version tlsv1.2\n",
    ).start()
    yield broker
    pool.close()


def tls_config(pki: Pki, port: int, **tls: object) -> MqttConfig:
    base = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    return MqttConfig.model_validate(
        {"port": port, "keepalive_s": 5, "reconnect_min_s": 1, "reconnect_max_s": 1, "tls": {**base, **tls}}
    )


def transport(cfg: MqttConfig) -> MqttTransport:
    return MqttTransport(cfg, robot_id="robot1", site="site1", agent_version="t", clock=SystemClock())


def wait_connected(mqtt: MqttTransport, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mqtt.connected:
            return True
        time.sleep(0.02)
    return mqtt.connected


def connects(cfg: MqttConfig, seconds: float) -> bool:
    """Whether a transport of `cfg` connects within `seconds` (it is stopped either way)."""
    mqtt = transport(cfg)
    mqtt.start()
    try:
        return wait_connected(mqtt, seconds)
    finally:
        mqtt.stop()


class TestTls:
    def test_alerts_flow_over_verified_tls_with_a_client_certificate(
        self, tls_broker: Broker, pki: Pki, tmp_path: Path
    ) -> None:
        """The agent verifies the broker against the CA and presents its client certificate."""
        outbox = Outbox(StateStore(tmp_path / "agent.db"), OutboxConfig(), SystemClock())
        collector_tls = tls_context(
            TlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        )
        with Collector(tls_broker.port, (TOPICS.alerts,), client_id="tls-sub", tls=collector_tls) as sub:
            mqtt = transport(tls_config(pki, tls_broker.port))
            mqtt.start()
            try:
                delivery = Delivery(outbox, mqtt)
                outbox.enqueue_now([OutboundMessage("e1", "alert", TOPICS.alerts, b'{"event_id":"e1"}')])
                deadline = time.monotonic() + 10
                while outbox.depth() and time.monotonic() < deadline:
                    delivery.pump()
                    time.sleep(0.01)
                assert sub.wait_for(lambda s: bool(s.on("/alerts")), 5)
            finally:
                mqtt.stop()
        assert b'{"event_id":"e1"}' == sub.on("/alerts")[0].payload

    def test_a_broker_certificate_from_another_ca_is_refused(self, tls_broker: Broker, pki: Pki) -> None:
        """Verification is never off: a server certificate the CA did not sign means no connection."""
        assert not connects(tls_config(pki, tls_broker.port, ca_file=str(pki.other_ca)), 2.0)

    def test_the_host_name_is_checked_and_can_be_pinned(self, tls_broker: Broker, pki: Pki) -> None:
        """A pinned server_hostname that the certificate names connects; one it does not name fails."""
        good = transport(tls_config(pki, tls_broker.port, server_hostname="broker.robotpm.test"))
        bad = transport(tls_config(pki, tls_broker.port, server_hostname="evil.example"))
        good.start()
        bad.start()
        try:
            assert wait_connected(good, 10)
            assert not wait_connected(bad, 1.5)
        finally:
            good.stop()
            bad.stop()

    def test_without_a_client_certificate_the_broker_refuses(self, tls_broker: Broker, pki: Pki) -> None:
        """require_certificate on the broker: a client without its certificate does not connect."""
        cfg = MqttConfig.model_validate(
            {"port": tls_broker.port, "keepalive_s": 5, "reconnect_min_s": 1, "tls": {"ca_file": str(pki.ca)}}
        )
        assert not connects(cfg, 2.0)

    def test_unreadable_certificates_are_a_configuration_error(self, pki: Pki, tmp_path: Path) -> None:
        """A missing CA file is reported as a ConfigError naming the file."""
        with pytest.raises(ConfigError, match=r"missing\.pem"):
            tls_context(TlsConfig(ca_file=tmp_path / "missing.pem"))


def test_tls_context_verifies_by_default(pki: Pki) -> None:
    """The context requires a certificate and checks the host name."""
    context = tls_context(TlsConfig(ca_file=pki.ca))
    assert (ssl.CERT_REQUIRED, True) == (context.verify_mode, context.check_hostname)
