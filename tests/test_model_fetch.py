"""Models announced over MQTT (or a channel index) and fetched over HTTPS: publish → download → store → live.

Real parts: a mosquitto per test (the ``broker`` fixture), an HTTPS server on 127.0.0.1 with a
CA made for the test (`tests.model_server`), real two-tier signing keys, real signed ONNX models
from `tests.models`, the trainer's own ``publish`` command, the agent's `ModelFetcher` and daemon.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import AgentConfig, ModelConfig, MqttConfig, load_agent_config
from agent.contract.announcement import ModelAnnouncement
from agent.contract.errors import ConfigError
from agent.contract.topics import model_announcements
from agent.daemon import AgentDaemon
from agent.errors import FetchRefusedError
from agent.models.backoff import Backoff
from agent.models.fetch import ModelFetcher, redact_url
from agent.models.install import safe_extract
from agent.publish.mqtt import MqttTransport
from agent.seams import SystemClock
from tests.agent_config import agent_config
from tests.fake_broker import Collector
from tests.model_server import (  # noqa: F401 (pytest fixtures: pki, webroot, https, plain_http, keys)
    SECRET,
    USER,
    ModelServer,
    Pki,
    https_fixture,
    keys_fixture,
    mqtt_publish,
    pki_fixture,
    plain_http_fixture,
    wait_until,
    webroot_fixture,
)
from tests.models import write_linear_model
from tests.mosquitto import Broker
from tests.signing_keys import FleetKeys, release_key
from tests.test_daemon import make_config
from trainer.cli import main as train_main
from trainer.publish import announcement_payload, index_path, publish
from trainer.signing import ReleaseSigner, sign_model_dir

CHANNEL = "stable"


def signed_version(tmp_path: Path, keys: FleetKeys, version: int = 2) -> Path:
    """A signed model version in a registry-like directory, as the trainer leaves it."""
    directory = tmp_path / "registry" / f"v{version}"
    write_linear_model(directory, version=version)
    sign_model_dir(directory, keys.private)
    return directory


def model_config(tmp_path: Path, pki: Pki, keys: FleetKeys | None, **update: object) -> ModelConfig:
    values: dict[str, object] = {
        "directory": tmp_path / "store",
        "bundled": tmp_path / "bundled",
        "channel": CHANNEL,
        "download_ca_file": pki.ca,
        "trusted_keys": keys.trusted if keys else None,
        "max_model_bytes": 1 << 20,
        **update,
    }
    return ModelConfig.model_validate(values)


def store_entries(config: ModelConfig) -> list[str]:
    """Everything in the store but its own state files (a failed fetch must leave nothing)."""
    if not config.directory.exists():
        return []
    own = {".floor.json", ".refused.json", ".revocations.signed", ".partial"}
    leftovers = [p.name for p in config.directory.iterdir() if p.name not in own]
    partial = config.directory / ".partial"
    return sorted(leftovers + ([f".partial/{p.name}" for p in partial.iterdir()] if partial.exists() else []))


def fetcher_for(config: ModelConfig) -> ModelFetcher:
    return ModelFetcher(config, backoff=Backoff(0.02, 0.1))


def published(version_dir: Path, server: ModelServer, webroot: Path, keys: FleetKeys | None) -> bytes:
    """Publish with the trainer's function; returns the signed announcement (the index's bytes)."""
    signer = ReleaseSigner(keys.private) if keys else None
    publish(version_dir, channel=CHANNEL, base_url=server.base_url, webroot=webroot, signer=signer)
    return index_path(webroot, CHANNEL).read_bytes()


@pytest.fixture
def announced_v2(tmp_path: Path, https: ModelServer, webroot: Path, keys: FleetKeys) -> bytes:
    """A signed v2 published on the HTTPS server by the trainer's function: its signed announcement."""
    return published(signed_version(tmp_path, keys), https, webroot, keys)


def announce_file(
    path: Path,
    server: ModelServer,
    keys: FleetKeys | None,
    *,
    version: int = 2,
    prefix: str = "",
    **update: object,
) -> bytes:
    """A signed announcement of any file in the web root, as a genuine trainer key would sign it."""
    data = path.read_bytes()
    announcement = ModelAnnouncement(
        model_id="test-linear",
        version=version,
        channel=CHANNEL,
        url=f"{server.base_url}{prefix}/{path.name}",
        sha256=hashlib.sha256(data).hexdigest(),
        length=len(data),
        published_at=datetime.now(timezone.utc),
    ).model_copy(update=update)
    return announcement_payload(announcement, ReleaseSigner(keys.private) if keys else None)


def resigned(payload: bytes, keys: FleetKeys, **update: object) -> bytes:
    """The announcement in `payload` changed and signed again (a trainer mistake, or a stale server)."""
    body = payload.split(b"\n\n", 1)[1]
    announcement = ModelAnnouncement.from_json(body).model_copy(update=update)
    return announcement_payload(announcement, ReleaseSigner(keys.private))


def refused_why(tmp_path: Path, pki: Pki, keys: FleetKeys | None, payload: bytes) -> str:
    """Why a fresh fetcher refuses `payload` (failing if it does not refuse it)."""
    result = fetcher_for(model_config(tmp_path, pki, keys)).process(payload)
    assert "refused" == result.outcome, result.detail
    return result.detail


def evil_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


# -- end to end ----------------------------------------------------------------------------------


class TestPublishToLive:
    def test_a_published_signed_model_is_downloaded_verified_and_goes_live_with_a_retained_status(
        self, tmp_path: Path, broker: Broker, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
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
                "--key",
                str(keys.private),
                "--mqtt-host",
                "127.0.0.1",
                "--mqtt-port",
                str(broker.port),
                "--mqtt-allow-plain",
            ]
        )
        assert 0 == code
        base = make_config(tmp_path)
        model = model_config(tmp_path, pki, keys, check_interval_s=0.05, probation_windows=0)
        mqtt_config = base.mqtt.model_copy(update={"port": broker.port})
        config: AgentConfig = base.model_copy(update={"model": model, "mqtt": mqtt_config})
        daemon = AgentDaemon(config)
        with Collector(broker.port, ("robotpm/v1/lab/r1/model",)) as collector:
            daemon.startup()
            try:
                deadline = time.monotonic() + 60
                while daemon.slot.current.manifest.version != 2:
                    fetched = daemon.model_fetcher.results() if daemon.model_fetcher else []
                    assert time.monotonic() < deadline, f"v2 not live; fetches: {fetched}"
                    daemon.tick(0.02)

                def active_v2(c: Collector) -> bool:
                    statuses = [m.json() for m in c.on("/model")]
                    return any(s["state"] == "active" and s["model"]["version"] == 2 for s in statuses)

                for _ in range(500):
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
        with Collector(broker.port, ("robotpm/v1/lab/r1/model",), client_id="late") as late:
            assert late.wait_for(lambda c: bool(c.on("/model")), 5)
            status = late.on("/model")[-1]
            assert status.retain
            assert ("active", 2) == (status.json()["state"], status.json()["model"]["version"])


# -- announcements -----------------------------------------------------------------------------------


class TestAnnouncements:
    def test_an_unsigned_announcement_is_refused_without_a_request_when_signatures_are_required(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """The version, URL and digest of an unsigned announcement are never acted on."""
        payload = published(signed_version(tmp_path, keys), https, webroot, None)
        result = fetcher_for(model_config(tmp_path, pki, keys)).process(payload)
        assert ("refused", "announcement is not signed, and signatures are required") == (
            result.outcome,
            result.detail,
        )
        assert 0 == sum(https.requests.values())

    def test_an_announcement_by_a_key_not_certified_for_its_channel_is_refused(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        beta, _ = release_key(tmp_path / "keys", keys.root_private, "beta-key", channels=("beta",))
        version_dir = signed_version(tmp_path, keys)
        publish(version_dir, channel=CHANNEL, base_url=https.base_url, webroot=webroot)
        body = index_path(webroot, CHANNEL).read_bytes()
        payload = announcement_payload(ModelAnnouncement.from_json(body), ReleaseSigner(beta))
        assert "may sign for channels ['beta'], not 'stable'" in refused_why(tmp_path, pki, keys, payload)
        assert 0 == sum(https.requests.values())

    def test_an_edited_signed_announcement_is_refused(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        edited = announced_v2.replace(b'"version":2', b'"version":9')
        assert "bad signature" in refused_why(tmp_path, pki, keys, edited)
        assert 0 == sum(https.requests.values())

    def test_an_announcement_of_another_channel_or_garbage_is_not_downloaded(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        config = model_config(tmp_path, pki, keys)
        payload = resigned(
            published(signed_version(tmp_path, keys), https, webroot, keys), keys, channel="beta"
        )
        fetcher = fetcher_for(config)
        assert "ignored" == fetcher.process(payload).outcome
        assert "refused" == fetcher.process(b'{"not": "an announcement"}').outcome
        assert "refused" == fetcher.process(b"robotpm-signed 1\ngarbage\n\n{}").outcome
        assert "ignored" == fetcher.process(b"").outcome
        assert 0 == sum(https.requests.values())

    def test_an_announcement_not_newer_than_the_version_floor_is_not_downloaded(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        """Once v2 is installed the floor is 2: v2 and v1 announced again are ignored, unrequested."""
        config = model_config(tmp_path, pki, keys)
        assert "installed" == fetcher_for(config).process(announced_v2).outcome
        for version in (2, 1):
            result = fetcher_for(config).process(resigned(announced_v2, keys, version=version))
            assert "ignored" == result.outcome
            assert "not newer than 2" in result.detail
        assert 1 == sum(https.requests.values())

    def test_the_same_announcement_delivered_again_is_downloaded_once(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        """A retained announcement comes again on every reconnect; the fetcher thread settles it once."""
        config = model_config(tmp_path, pki, keys)
        fetcher = fetcher_for(config)
        fetcher.start()
        try:
            fetcher.offer(announced_v2)
            wait_until(lambda: any(r.outcome == "installed" for r in fetcher.results()))
            fetcher.offer(announced_v2)
            wait_until(lambda: len(fetcher.results()) >= 2)
        finally:
            fetcher.stop()
        assert ["installed", "ignored"] == [r.outcome for r in fetcher.results()]
        assert 1 == https.requests["/test-linear-v2.tar"]
        assert ["v2"] == store_entries(config)


# -- refusals of the bundle ------------------------------------------------------------------------


class TestRefusals:
    def test_a_bundle_whose_sha256_differs_from_the_announcement_is_retried_and_nothing_lands(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """The digest is checked before unpacking; a mismatch (a stale cache) is retried, not installed."""
        config = model_config(tmp_path, pki, keys)
        payload = resigned(
            published(signed_version(tmp_path, keys), https, webroot, keys), keys, sha256="0" * 64
        )
        result = fetcher_for(config).process(payload, attempts=2)
        assert "failed" == result.outcome
        assert "sha256" in result.detail
        assert 2 == https.requests["/test-linear-v2.tar"]
        assert [] == store_entries(config)

    @pytest.mark.parametrize(
        "name", ["../escaped", "/tmp/robotpm-absolute-escape", "sub/model.onnx", "model.onnx.bak"]
    )
    def test_a_bundle_member_with_a_path_or_an_unexpected_name_is_refused(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys, name: str
    ) -> None:
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
        result = fetcher_for(config).process(announce_file(bundle, https, keys))
        assert "refused" == result.outcome
        assert repr(name) in result.detail
        assert [] == store_entries(config)
        assert not (config.directory.parent / "escaped").exists()
        assert not Path("/tmp/robotpm-absolute-escape").exists()

    def test_a_symlink_member_is_refused(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        link = tarfile.TarInfo("model.onnx")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        bundle = webroot / "link.tar"
        evil_tar(bundle, [(link, b""), (tarfile.TarInfo("manifest.json"), b"{}")])
        config = model_config(tmp_path, pki, keys)
        result = fetcher_for(config).process(announce_file(bundle, https, keys))
        assert "refused" == result.outcome
        assert "not a regular file" in result.detail
        assert [] == store_entries(config)

    def test_a_signed_announcement_of_an_unsigned_bundle_is_refused_and_deleted(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """The bundle's own signature is checked on the downloaded bytes, in staging: nothing enters."""
        unsigned = tmp_path / "registry" / "v2"
        write_linear_model(unsigned, version=2)
        publish(unsigned, channel=CHANNEL, base_url=https.base_url, webroot=webroot)
        payload = announce_file(webroot / "test-linear-v2.tar", https, keys)
        config = model_config(tmp_path, pki, keys)
        result = fetcher_for(config).process(payload)
        assert ("refused", "no signature (manifest.sig is missing)") == (result.outcome, result.detail)
        assert [] == store_entries(config)
        assert 0 == fetcher_for(config)._store.floor

    def test_an_http_url_is_refused_without_a_request_unless_allow_http(
        self, tmp_path: Path, plain_http: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        payload = published(signed_version(tmp_path, keys), plain_http, webroot, keys)
        strict = model_config(tmp_path, pki, keys)
        result = fetcher_for(strict).process(payload)
        assert "refused" == result.outcome
        assert "'http' refused" in result.detail
        assert 0 == sum(plain_http.requests.values())
        assert [] == store_entries(strict)
        relaxed = model_config(tmp_path, pki, keys, allow_http=True)
        result = fetcher_for(relaxed).process(payload)
        assert "installed" == result.outcome, result.detail
        assert ["v2"] == store_entries(relaxed)

    def test_a_redirect_from_https_to_http_is_refused(
        self,
        announced_v2: bytes,
        tmp_path: Path,
        https: ModelServer,
        plain_http: ModelServer,
        pki: Pki,
        keys: FleetKeys,
    ) -> None:
        https.redirect_target = plain_http.base_url
        redirected = resigned(announced_v2, keys, url=f"{https.base_url}/to-http/test-linear-v2.tar")
        assert "'http' refused" in refused_why(tmp_path, pki, keys, redirected)
        assert 0 == sum(plain_http.requests.values())

    def test_a_redirect_to_another_host_is_refused_and_one_on_the_same_origin_is_followed(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        """https://127.0.0.1:P → https://localhost:P is another origin (same machine, other name)."""
        config = model_config(tmp_path, pki, keys)
        https.redirect_target = f"https://localhost:{https.port}"
        elsewhere = resigned(announced_v2, keys, url=f"{https.base_url}/to-http/test-linear-v2.tar")
        result = fetcher_for(config).process(elsewhere)
        assert "refused" == result.outcome
        assert "redirect to another origin refused" in result.detail
        assert 0 == https.requests["/test-linear-v2.tar"]
        same = resigned(announced_v2, keys, url=f"{https.base_url}/same/test-linear-v2.tar")
        result = fetcher_for(config).process(same)
        assert "installed" == result.outcome, result.detail
        assert 1 == https.requests["/test-linear-v2.tar"]

    def test_a_missing_bundle_and_a_redirect_loop_fail_and_are_retried(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        config = model_config(tmp_path, pki, keys)
        missing = fetcher_for(config).process(
            resigned(announced_v2, keys, url=f"{https.base_url}/nothing.tar")
        )
        assert ("failed", "HTTP 404 Not Found") == (missing.outcome, missing.detail)
        loop = f"{https.base_url}{'/same' * 7}/test-linear-v2.tar"
        looping = fetcher_for(config).process(resigned(announced_v2, keys, url=loop))
        assert ("failed", "more than 5 redirects") == (looping.outcome, looping.detail)
        assert [] == store_entries(config)

    def test_a_server_certificate_from_another_ca_fails_and_is_retried(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        """A certificate the trust store refuses may be fixed on the server: failed (retried), not refused."""
        config = model_config(tmp_path, pki, keys, download_ca_file=pki.other_ca)
        result = fetcher_for(config).process(announced_v2)
        assert "failed" == result.outcome
        assert "certificate" in result.detail
        assert [] == store_entries(config)

    def test_an_announced_length_over_download_max_bytes_is_refused_without_a_request(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        config = model_config(tmp_path, pki, keys)
        payload = resigned(
            published(signed_version(tmp_path, keys), https, webroot, keys),
            keys,
            length=config.download_max_bytes + 1,
        )
        result = fetcher_for(config).process(payload)
        assert "refused" == result.outcome
        assert "download_max_bytes" in result.detail
        assert 0 == sum(https.requests.values())

    def test_an_oversize_download_is_aborted_before_it_is_complete(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """4 MiB sent without Content-Length for a bundle announced at 64 KiB: cut off at 64 KiB."""
        big = webroot / "big.tar"
        big.write_bytes(b"\0" * (4 << 20))
        payload = announce_file(big, https, keys, prefix="/no-length", length=64 << 10)
        config = model_config(tmp_path, pki, keys)
        result = fetcher_for(config).process(payload)
        assert "refused" == result.outcome
        assert f"download cut off: more than {64 << 10} bytes" == result.detail
        assert [] == store_entries(config)

    def test_a_bundle_holding_another_version_than_announced_is_refused(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """A v2 bundle announced as v3 would land in the store as v3: refused."""
        payload = resigned(published(signed_version(tmp_path, keys), https, webroot, keys), keys, version=3)
        config = model_config(tmp_path, pki, keys)
        result = fetcher_for(config).process(payload)
        assert "refused" == result.outcome
        assert "test-linear@2" in result.detail
        assert [] == store_entries(config)


# -- fetching that converges ----------------------------------------------------------------------


class TestConvergence:
    def test_a_trickling_server_is_cut_off_at_the_download_deadline(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        """One byte every 0.2 s keeps every read alive; the total deadline of 1 s ends it."""
        trickling = resigned(announced_v2, keys, url=f"{https.base_url}/trickle/test-linear-v2.tar")
        config = model_config(tmp_path, pki, keys, download_deadline_s=1.0)
        started = time.monotonic()
        result = fetcher_for(config).process(trickling)
        assert "failed" == result.outcome
        assert "deadline of 1s passed" in result.detail
        assert time.monotonic() - started < 30, "cut at the deadline, not at the end of the trickle"
        assert ["v2"] != store_entries(config)

    def test_stopping_the_agent_interrupts_a_trickling_download(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        """stop() returns promptly although the server would take minutes and the deadline is 10 minutes."""
        fetcher = fetcher_for(model_config(tmp_path, pki, keys))
        fetcher.start()
        fetcher.offer(resigned(announced_v2, keys, url=f"{https.base_url}/trickle/test-linear-v2.tar"))
        wait_until(lambda: https.requests["/trickle/test-linear-v2.tar"] >= 1)
        started = time.monotonic()
        fetcher.stop()
        assert time.monotonic() - started < 10
        assert "stopping" in fetcher.results()[-1].detail

    def test_a_broken_download_is_resumed_with_a_range_request(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        """The first response breaks off after 1 KiB; the retry asks for the rest and installs it."""
        cut = resigned(announced_v2, keys, url=f"{https.base_url}/cut/test-linear-v2.tar")
        config = model_config(tmp_path, pki, keys)
        result = fetcher_for(config).process(cut, attempts=2)
        assert "installed" == result.outcome, result.detail
        first, second = https.headers_of("/cut/test-linear-v2.tar")
        assert "Range" not in first
        assert f"bytes={https.cut_after}-" == second["Range"]
        assert ["v2"] == store_entries(config)

    def test_user_info_in_the_url_becomes_basic_authentication_over_https_only(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        """https://robot:s3cr%3Aet@host/… authenticates; http://… with a password is refused, unsent."""
        config = model_config(tmp_path, pki, keys, allow_http=True)
        url = f"https://{USER}:{SECRET.replace(':', '%3A')}@127.0.0.1:{https.port}/auth/test-linear-v2.tar"
        clear = resigned(announced_v2, keys, url=url.replace("https://", "http://"))
        result = fetcher_for(config).process(clear)
        assert "refused" == result.outcome
        assert "in clear text" in result.detail
        assert 0 == sum(https.requests.values())
        result = fetcher_for(config).process(resigned(announced_v2, keys, url=url))
        assert "installed" == result.outcome, result.detail
        assert SECRET not in json.dumps([r.detail for r in fetcher_for(config).results()])

    def test_the_fetcher_never_gives_up_on_a_failing_server(
        self, announced_v2: bytes, tmp_path: Path, https: ModelServer, pki: Pki, keys: FleetKeys
    ) -> None:
        """Eight 503s in a row (the old fetcher gave up after four attempts); then it installs."""
        https.fail_first = 8
        fetcher = fetcher_for(model_config(tmp_path, pki, keys))
        fetcher.start()
        try:
            fetcher.offer(resigned(announced_v2, keys, url=f"{https.base_url}/flaky/test-linear-v2.tar"))
            wait_until(lambda: any(r.outcome == "installed" for r in fetcher.results()), timeout_s=60)
        finally:
            fetcher.stop()
        failures = [r for r in fetcher.results() if r.outcome == "failed"]
        assert 8 == len(failures)
        assert all("HTTP 503" in r.detail for r in failures)

    def test_retry_waits_double_with_jitter_up_to_the_hourly_cap_and_never_end(self) -> None:
        import random

        backoff = Backoff(2.0, 3600.0, rng=random.Random(7))
        waits = [backoff.delay(n) for n in range(1, 200)]
        assert all(0 < w <= 3600.0 for w in waits)
        assert 1.0 <= waits[0] <= 2.0
        assert all(1800.0 <= w <= 3600.0 for w in waits[12:]), "the tail is hourly, jittered"
        assert len({round(w, 6) for w in waits[12:]}) > 100, "jittered, not in lock step"

    def test_a_robot_that_missed_every_announcement_converges_through_the_channel_index(
        self, tmp_path: Path, https: ModelServer, webroot: Path, pki: Pki, keys: FleetKeys
    ) -> None:
        """No MQTT at all: the fetcher polls channels/stable.announcement and installs v2; then 304s."""
        published(signed_version(tmp_path, keys), https, webroot, keys)
        index = f"{https.base_url}/channels/{CHANNEL}.announcement"
        config = model_config(tmp_path, pki, keys, index_url=index, index_interval_s=1)
        fetcher = fetcher_for(config)
        fetcher.start()
        try:
            wait_until(lambda: any(r.outcome == "installed" for r in fetcher.results()))
            wait_until(lambda: https.requests[f"/channels/{CHANNEL}.announcement"] >= 2)
        finally:
            fetcher.stop()
        assert ["v2"] == store_entries(config)
        later = https.headers_of(f"/channels/{CHANNEL}.announcement")[1]
        assert later.get("If-None-Match"), "the index is asked for only when it changed"
        assert 1 == https.requests["/test-linear-v2.tar"]


# -- units -----------------------------------------------------------------------------------------


class TestUnits:
    def test_safe_extract_writes_the_bundle_files(
        self, tmp_path: Path, webroot: Path, keys: FleetKeys
    ) -> None:
        publish(signed_version(tmp_path, keys), channel=CHANNEL, base_url="https://x", webroot=webroot)
        out = tmp_path / "out"
        out.mkdir()
        names = safe_extract(webroot / "test-linear-v2.tar", out, 1 << 20)
        assert ["manifest.json", "manifest.sig", "model.onnx"] == names
        assert (tmp_path / "registry/v2/model.onnx").read_bytes() == (out / "model.onnx").read_bytes()

    def test_safe_extract_refuses_a_bundle_that_unpacks_to_more_than_the_cap(
        self, tmp_path: Path, webroot: Path, keys: FleetKeys
    ) -> None:
        publish(signed_version(tmp_path, keys), channel=CHANNEL, base_url="https://x", webroot=webroot)
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(FetchRefusedError, match="more than 100 bytes"):
            safe_extract(webroot / "test-linear-v2.tar", out, 100)
        assert [] == list(out.iterdir())

    def test_the_same_version_gives_the_same_bundle_bytes(self, tmp_path: Path, keys: FleetKeys) -> None:
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

    def test_the_download_cap_may_not_exceed_what_a_model_within_the_model_cap_needs(
        self, tmp_path: Path
    ) -> None:
        """The old default (64 MiB downloads for 16 MiB models) is a configuration error now."""
        with pytest.raises(ValidationError, match="download_max_bytes"):
            ModelConfig(directory=tmp_path, download_max_bytes=64 << 20)
        config = ModelConfig(directory=tmp_path)
        assert config.max_model_bytes < config.download_max_bytes < config.max_model_bytes + (2 << 20)


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
            mqtt_publish(broker.port, topic, b"first")
            wait_until(lambda: b"first" in received)
            broker.stop()
            wait_until(lambda: not transport.connected)
            (broker.workdir / "mosquitto.db").unlink(missing_ok=True)  # sessions and retained messages gone
            broker.start()
            mqtt_publish(broker.port, topic, b"second")
            wait_until(lambda: b"second" in received, timeout_s=15)
        finally:
            transport.stop()
        assert transport.connects >= 2
