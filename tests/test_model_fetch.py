"""Models announced over MQTT and fetched over HTTPS: trainer `publish` → agent download → store → live.

Real parts: a mosquitto per test (the ``broker`` fixture), an HTTPS server on 127.0.0.1
with a CA made for the test, real signed ONNX models from `tests.models`, the trainer's
own ``publish`` command and bundle writer, the agent's `ModelFetcher` and daemon.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import ssl
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from agent.config import AgentConfig, ModelConfig, MqttConfig, load_agent_config
from agent.contract.announcement import ModelAnnouncement
from agent.contract.errors import ConfigError
from agent.contract.topics import model_announcements
from agent.daemon import AgentDaemon
from agent.models.fetch import FetchRefusedError, ModelFetcher, redact_url, safe_extract
from agent.publish.mqtt import MqttTransport
from agent.seams import SystemClock
from tests.agent_config import agent_config
from tests.fake_broker import Collector
from tests.models import write_linear_model
from tests.mosquitto import Broker
from tests.test_daemon import make_config
from tests.test_mqtt_tls import _ca, _leaf, _write_cert, _write_key
from trainer.cli import main as train_main
from trainer.publish import publish
from trainer.signing import generate_key_pair, sign_model_dir

CHANNEL = "stable"


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


@pytest.fixture(name="pki", scope="module")
def _pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("https-pki")
    ca, ca_key = _ca("RobotPM model server test CA")
    cert, key = _leaf(ca, ca_key, "models.robotpm.test", server=True)
    other, _ = _ca("Somebody else's CA")
    return Pki(
        ca=_write_cert(ca, d / "ca.pem"),
        cert=_write_cert(cert, d / "server.pem"),
        key=_write_key(key, d / "server.key"),
        other_ca=_write_cert(other, d / "other-ca.pem"),
    )


class ModelServer:
    """A static file server for a web root, over HTTPS (or plain HTTP), counting requests per path.

    ``/no-length/<name>`` serves the file without Content-Length (the end is the close);
    ``/to-http/<name>`` redirects to the same file on `redirect_target` (a plain HTTP server).
    """

    def __init__(self, webroot: Path, pki: Pki | None) -> None:
        self.webroot = webroot
        self.requests: Counter[str] = Counter()
        self.redirect_target = ""
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests[self.path] += 1
                if self.path.startswith("/to-http/"):
                    self.send_response(302)
                    self.send_header("Location", f"{server.redirect_target}/{self.path.split('/', 2)[2]}")
                    self.end_headers()
                    return
                streamed = self.path.startswith("/no-length/")
                path = webroot / self.path.rsplit("/", 1)[-1]
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                if not streamed:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    for start in range(0, len(data), 65536):
                        self.wfile.write(data[start : start + 65536])
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    return

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if pki is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(pki.cert), str(pki.key))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="test-model-server")
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


@pytest.fixture(name="webroot")
def _webroot(tmp_path: Path) -> Path:
    root = tmp_path / "webroot"
    root.mkdir()
    return root


@pytest.fixture(name="https")
def _https(webroot: Path, pki: Pki) -> Iterator[ModelServer]:
    server = ModelServer(webroot, pki)
    yield server
    server.close()


@pytest.fixture(name="plain_http")
def _plain_http(webroot: Path) -> Iterator[ModelServer]:
    server = ModelServer(webroot, None)
    yield server
    server.close()


@dataclass(frozen=True)
class Keys:
    private: Path
    trusted: Path


@pytest.fixture(name="keys")
def _keys(tmp_path: Path) -> Keys:
    private, public = generate_key_pair("fleet", tmp_path / "keys")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / public.name).write_bytes(public.read_bytes())
    return Keys(private, trusted)


def signed_version(tmp_path: Path, keys: Keys, version: int = 2) -> Path:
    """A signed model version in a registry-like directory, as the trainer leaves it."""
    directory = tmp_path / "registry" / f"v{version}"
    write_linear_model(directory, version=version)
    sign_model_dir(directory, keys.private, "fleet")
    return directory


def model_config(tmp_path: Path, pki: Pki, keys: Keys, **update: object) -> ModelConfig:
    values: dict[str, object] = {
        "directory": tmp_path / "store",
        "bundled": tmp_path / "bundled",
        "channel": CHANNEL,
        "download_ca_file": pki.ca,
        "trusted_keys": keys.trusted,
        "download_max_bytes": 1 << 20,
        **update,
    }
    return ModelConfig.model_validate(values)


def store_entries(config: ModelConfig) -> list[str]:
    """Everything in the store, dot-directories included (a failed fetch must leave nothing)."""
    return sorted(p.name for p in config.directory.iterdir()) if config.directory.exists() else []


def fetcher_for(config: ModelConfig) -> ModelFetcher:
    return ModelFetcher(config, retry_delays=(0.05,))


def evil_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def announce_file(
    path: Path, server: ModelServer, *, version: int = 2, prefix: str = ""
) -> ModelAnnouncement:
    data = path.read_bytes()
    return ModelAnnouncement(
        model_id="test-linear",
        version=version,
        channel=CHANNEL,
        url=f"{server.base_url}{prefix}/{path.name}",
        sha256=hashlib.sha256(data).hexdigest(),
        length=len(data),
        published_at=datetime.now(timezone.utc),
    )


# -- end to end ----------------------------------------------------------------------------------


class TestPublishToLive:
    def test_a_published_signed_model_is_downloaded_verified_and_goes_live_with_a_retained_status(
        self, tmp_path: Path, broker: Broker, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        """`robotpm-train publish` of a signed v2 → the running agent fetches it over HTTPS → v2 is active.

        The agent starts on its bundled v1; the announcement is retained, published before
        the agent connects, so this also shows a late subscriber gets it.
        """
        version_dir = signed_version(tmp_path, keys)
        code = train_main(
            [
                "publish",
                str(version_dir),
                "--channel",
                CHANNEL,
                "--base-url",
                https.base_url,
                "--out",
                str(webroot),
                "--mqtt-host",
                "127.0.0.1",
                "--mqtt-port",
                str(broker.port),
            ]
        )
        assert 0 == code
        base = make_config(tmp_path)
        model = model_config(tmp_path, pki, keys, check_interval_s=0.05, probation_windows=0)
        mqtt = base.mqtt.model_copy(update={"port": broker.port})
        config: AgentConfig = base.model_copy(update={"model": model, "mqtt": mqtt})
        daemon = AgentDaemon(config)
        started = time.monotonic()
        with Collector(broker.port, ("robotpm/v1/lab/r1/model",)) as collector:
            daemon.startup()
            try:
                deadline = time.monotonic() + 20
                while daemon.slot.current.manifest.version != 2:
                    fetched = daemon.model_fetcher.results() if daemon.model_fetcher else []
                    assert time.monotonic() < deadline, f"v2 not live; fetches: {fetched}"
                    daemon.tick(0.02)
                live_after = time.monotonic() - started

                def active_v2(c: Collector) -> bool:
                    retained_or_live = [m.json() for m in c.on("/model")]
                    return any(
                        s["state"] == "active" and s["model"]["version"] == 2 for s in retained_or_live
                    )

                for _ in range(200):
                    daemon.tick(0.01)
                    if active_v2(collector):
                        break
                assert active_v2(collector)
            finally:
                daemon.shutdown()
        assert ["v2"] == store_entries(config.model)
        assert 1 == https.requests["/test-linear-v2.tar"]
        assert daemon.model_fetcher is not None
        [result] = [r for r in daemon.model_fetcher.results() if r.outcome == "installed"]
        assert result.target == config.model.directory / "v2"
        assert live_after < 20
        # The retained status a new subscriber gets names v2.
        with Collector(broker.port, ("robotpm/v1/lab/r1/model",), client_id="late") as late:
            assert late.wait_for(lambda c: bool(c.on("/model")), 5)
            status = late.on("/model")[-1]
            assert status.retain
            assert ("active", 2) == (status.json()["state"], status.json()["model"]["version"])


# -- refusals ------------------------------------------------------------------------------------


class TestRefusals:
    def test_a_bundle_whose_sha256_differs_from_the_announcement_is_refused_and_nothing_lands_in_the_store(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        """The digest is checked before unpacking; it is retried (a stale cache) and then given up."""
        config = model_config(tmp_path, pki, keys)
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url=https.base_url, webroot=webroot
        )
        tampered = announcement.model_copy(update={"sha256": "0" * 64})
        result = fetcher_for(config).process(tampered.to_json())
        assert "failed" == result.outcome
        assert "sha256" in result.detail
        assert 2 == https.requests["/test-linear-v2.tar"], "one retry after the first attempt"
        assert [] == store_entries(config)

    @pytest.mark.parametrize(
        "name", ["../escaped", "/tmp/robotpm-absolute-escape", "sub/model.onnx", "model.onnx.bak"]
    )
    def test_a_bundle_member_with_a_path_or_an_unexpected_name_is_refused(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys, name: str
    ) -> None:
        """Only the plain names model.onnx, manifest.json, manifest.sig are unpacked; nothing is written."""
        version_dir = signed_version(tmp_path, keys)
        bundle = webroot / "evil.tar"
        evil_tar(
            bundle,
            [
                (tarfile.TarInfo("model.onnx"), (version_dir / "model.onnx").read_bytes()),
                (tarfile.TarInfo("manifest.json"), (version_dir / "manifest.json").read_bytes()),
                (tarfile.TarInfo(name), b"payload"),
            ],
        )
        config = model_config(tmp_path, pki, keys)
        result = fetcher_for(config).process(announce_file(bundle, https).to_json())
        assert "refused" == result.outcome
        assert repr(name) in result.detail
        assert [] == store_entries(config)
        assert not (config.directory.parent / "escaped").exists()
        assert not Path("/tmp/robotpm-absolute-escape").exists()

    def test_a_symlink_member_is_refused(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        """A link named model.onnx (pointing anywhere) is not a regular file."""
        link = tarfile.TarInfo("model.onnx")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        bundle = webroot / "link.tar"
        evil_tar(bundle, [(link, b""), (tarfile.TarInfo("manifest.json"), b"{}")])
        config = model_config(tmp_path, pki, keys)
        result = fetcher_for(config).process(announce_file(bundle, https).to_json())
        assert "refused" == result.outcome
        assert "not a regular file" in result.detail
        assert [] == store_entries(config)

    def test_an_http_url_is_refused_without_a_request_unless_allow_http(
        self, tmp_path: Path, plain_http: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        """Only https by default; with allow_http the same announcement is fetched and installed."""
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url=plain_http.base_url, webroot=webroot
        )
        strict = model_config(tmp_path, pki, keys)
        result = fetcher_for(strict).process(announcement.to_json())
        assert "refused" == result.outcome
        assert "'http' refused" in result.detail
        assert 0 == sum(plain_http.requests.values())
        assert [] == store_entries(strict)
        relaxed = model_config(tmp_path, pki, keys, allow_http=True)
        result = fetcher_for(relaxed).process(announcement.to_json())
        assert "installed" == result.outcome, result.detail
        assert ["v2"] == store_entries(relaxed)

    def test_a_redirect_from_https_to_http_is_refused(
        self, tmp_path: Path, https: ModelServer, plain_http: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url=https.base_url, webroot=webroot
        )
        https.redirect_target = plain_http.base_url
        redirected = announcement.model_copy(update={"url": f"{https.base_url}/to-http/test-linear-v2.tar"})
        result = fetcher_for(model_config(tmp_path, pki, keys)).process(redirected.to_json())
        assert "refused" == result.outcome
        assert "redirect to a http:// URL refused" in result.detail
        assert 0 == sum(plain_http.requests.values())

    def test_a_server_certificate_from_another_ca_is_refused(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url=https.base_url, webroot=webroot
        )
        config = model_config(tmp_path, pki, keys, download_ca_file=pki.other_ca)
        result = fetcher_for(config).process(announcement.to_json())
        assert "refused" == result.outcome
        assert "certificate" in result.detail
        assert [] == store_entries(config)

    def test_an_announced_length_over_download_max_bytes_is_refused_without_a_request(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url=https.base_url, webroot=webroot
        )
        config = model_config(tmp_path, pki, keys, download_max_bytes=announcement.length - 1)
        result = fetcher_for(config).process(announcement.to_json())
        assert "refused" == result.outcome
        assert "download_max_bytes" in result.detail
        assert 0 == sum(https.requests.values())

    def test_a_download_longer_than_announced_is_cut_off_while_streaming(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        """4 MiB sent without Content-Length for a bundle announced at 64 KiB: cut off at 64 KiB."""
        big = webroot / "big.tar"
        big.write_bytes(b"\0" * (4 << 20))
        announcement = announce_file(big, https, prefix="/no-length").model_copy(update={"length": 64 << 10})
        config = model_config(tmp_path, pki, keys, download_max_bytes=64 << 10)
        fetcher = fetcher_for(config)
        result = fetcher.process(announcement.to_json())
        assert "refused" == result.outcome
        assert f"download cut off: more than {64 << 10} bytes" == result.detail
        assert [] == store_entries(config)

    def test_a_bundle_holding_another_version_than_announced_is_refused(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        """A v2 bundle announced as v3 would land in the store as v3: refused."""
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url=https.base_url, webroot=webroot
        )
        config = model_config(tmp_path, pki, keys)
        result = fetcher_for(config).process(announcement.model_copy(update={"version": 3}).to_json())
        assert "refused" == result.outcome
        assert "test-linear@2" in result.detail
        assert [] == store_entries(config)


class TestIgnored:
    def test_an_announcement_not_newer_than_the_store_is_not_downloaded(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        config = model_config(tmp_path, pki, keys)
        write_linear_model(config.directory / "v2", version=2)
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url=https.base_url, webroot=webroot
        )
        for version in (2, 1):
            result = fetcher_for(config).process(
                announcement.model_copy(update={"version": version}).to_json()
            )
            assert "ignored" == result.outcome
            assert "not newer than 2" in result.detail
        assert 0 == sum(https.requests.values())

    def test_an_announcement_of_another_channel_or_garbage_is_not_downloaded(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        config = model_config(tmp_path, pki, keys)
        announcement = publish(
            signed_version(tmp_path, keys), channel="beta", base_url=https.base_url, webroot=webroot
        )
        fetcher = fetcher_for(config)
        assert "ignored" == fetcher.process(announcement.to_json()).outcome
        assert "refused" == fetcher.process(b'{"not": "an announcement"}').outcome
        assert "ignored" == fetcher.process(b"").outcome
        assert 0 == sum(https.requests.values())

    def test_the_same_announcement_delivered_again_is_downloaded_once(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: Keys
    ) -> None:
        """A retained announcement comes again on every reconnect; the fetcher thread settles it once."""
        config = model_config(tmp_path, pki, keys)
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url=https.base_url, webroot=webroot
        )
        fetcher = fetcher_for(config)
        fetcher.start()
        try:
            fetcher.offer(announcement.to_json())
            deadline = time.monotonic() + 10
            while not any(r.outcome == "installed" for r in fetcher.results()):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            fetcher.offer(announcement.to_json())
            while len(fetcher.results()) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            fetcher.stop()
        assert ["installed", "ignored"] == [r.outcome for r in fetcher.results()]
        assert 1 == https.requests["/test-linear-v2.tar"]
        assert ["v2"] == store_entries(config)


# -- units -----------------------------------------------------------------------------------------


class TestUnits:
    def test_safe_extract_writes_the_three_bundle_files(
        self, tmp_path: Path, webroot: Path, keys: Keys
    ) -> None:
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url="https://x", webroot=webroot
        )
        out = tmp_path / "out"
        out.mkdir()
        names = safe_extract(webroot / announcement.url.rsplit("/", 1)[1], out, 1 << 20)
        assert ["manifest.json", "manifest.sig", "model.onnx"] == names
        assert (tmp_path / "registry/v2/model.onnx").read_bytes() == (out / "model.onnx").read_bytes()

    def test_safe_extract_refuses_a_bundle_that_unpacks_to_more_than_the_cap(
        self, tmp_path: Path, webroot: Path, keys: Keys
    ) -> None:
        announcement = publish(
            signed_version(tmp_path, keys), channel=CHANNEL, base_url="https://x", webroot=webroot
        )
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(FetchRefusedError, match="more than 100 bytes"):
            safe_extract(webroot / announcement.url.rsplit("/", 1)[1], out, 100)
        assert [] == list(out.iterdir())

    def test_the_same_version_gives_the_same_bundle_bytes(self, tmp_path: Path, keys: Keys) -> None:
        version_dir = signed_version(tmp_path, keys)
        first = publish(version_dir, channel=CHANNEL, base_url="https://x", webroot=tmp_path / "a")
        second = publish(version_dir, channel=CHANNEL, base_url="https://x", webroot=tmp_path / "b")
        assert first.sha256 == second.sha256

    def test_an_announcement_with_a_bad_digest_or_channel_does_not_parse(self) -> None:
        good = {
            "model_id": "m",
            "version": 2,
            "channel": CHANNEL,
            "url": "https://h/m-v2.tar",
            "sha256": "a" * 64,
            "length": 10,
            "published_at": "2026-11-27T00:00:00Z",
        }
        assert 2 == ModelAnnouncement.model_validate(good).version
        for bad in (
            {"sha256": "A" * 64},
            {"channel": "a/b"},
            {"channel": "#"},
            {"published_at": "2026-11-27T00:00:00"},
        ):
            with pytest.raises(ValidationError):
                ModelAnnouncement.model_validate({**good, **bad})
        assert json.loads(ModelAnnouncement.model_validate(good).to_json())["schema_version"] == 1

    def test_urls_are_logged_without_user_info_query_or_fragment(self) -> None:
        assert "https://cdn.example:8443/m/v2.tar" == redact_url(
            "https://u:secret@cdn.example:8443/m/v2.tar?token=t#f"
        )

    def test_the_model_channel_must_be_a_topic_segment(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError):
            ModelConfig(directory=tmp_path, channel="stable/+")
        assert ModelConfig(directory=tmp_path).channel is None
        assert ModelConfig(directory=tmp_path).allow_http is False

    def test_a_relative_download_ca_file_is_resolved_beside_the_config_file(self, tmp_path: Path) -> None:
        path = tmp_path / "config.toml"
        path.write_text(agent_config(port=1883, model={"channel": CHANNEL, "download_ca_file": "pki/ca.pem"}))
        config = load_agent_config(path)
        assert tmp_path.resolve() / "pki" / "ca.pem" == config.model.download_ca_file
        assert CHANNEL == config.model.channel

    def test_a_missing_download_ca_file_is_a_config_error_at_start(self, tmp_path: Path) -> None:
        config = ModelConfig(directory=tmp_path, channel=CHANNEL, download_ca_file=tmp_path / "missing.pem")
        with pytest.raises(ConfigError, match="download_ca_file"):
            ModelFetcher(config)


class TestSubscription:
    def test_the_transport_subscribes_again_on_a_broker_that_lost_its_sessions(self, broker: Broker) -> None:
        """A broker that lost its state (or another node): subscribing on each connect brings the news."""
        received: list[bytes] = []
        transport = MqttTransport(
            MqttConfig(port=broker.port, reconnect_min_s=1, reconnect_max_s=1),
            robot_id="r1",
            site="lab",
            agent_version="0.1.0",
            clock=SystemClock(),
        )
        topic = model_announcements(CHANNEL)
        transport.subscribe(topic, received.append)
        transport.start()
        try:
            publish_retained(broker.port, topic, b"first")
            wait_until(lambda: b"first" in received)
            broker.stop()
            wait_until(lambda: not transport.connected)
            (broker.workdir / "mosquitto.db").unlink(missing_ok=True)  # sessions and retained messages gone
            broker.start()
            publish_retained(broker.port, topic, b"second")
            wait_until(lambda: b"second" in received, timeout_s=15)
        finally:
            transport.stop()
        assert transport.connects >= 2


def publish_retained(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
