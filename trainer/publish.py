"""Publishing a model version to a fleet: a bundle in a web root and a retained MQTT announcement.

``robotpm-train publish VERSION_DIR --channel NAME --base-url URL --out WEBROOT`` writes
``WEBROOT/<model_id>-v<version>.tar`` (see `agent.contract.announcement` for the
format) and publishes a `ModelAnnouncement` for it, retained and QoS 1, on
``robotpm/v1/models/<channel>``. Any web server, object store or CDN that serves
WEBROOT at ``--base-url`` serves the fleet; agents following the channel download,
verify and install it. Sign the version first (``robotpm-train sign``): agents with
``trusted_keys`` refuse unsigned models.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

from agent.contract.announcement import ModelAnnouncement, bundle_name
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, ModelManifest
from agent.contract.topics import model_announcements
from trainer.errors import TrainerError
from trainer.registry import verified_manifest


class PublishError(TrainerError):
    """The version cannot be bundled or announced."""


def write_bundle(version_dir: Path, webroot: Path) -> tuple[Path, ModelManifest]:
    """Write the bundle of `version_dir` into `webroot` (atomically); returns its path and the manifest.

    The manifest must describe ``model.onnx`` (sha256 and length), so a bundle never
    ships a model its manifest does not vouch for. Members are written in a fixed
    order with fixed owners, modes and times, so the same version gives the same bytes.
    """
    manifest = verified_manifest(version_dir, PublishError)
    names = [MODEL_FILE, MANIFEST_FILE] + (
        [SIGNATURE_FILE] if (version_dir / SIGNATURE_FILE).exists() else []
    )
    webroot.mkdir(parents=True, exist_ok=True)
    target = webroot / bundle_name(manifest.model_id, manifest.version)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=webroot)
    try:
        with os.fdopen(fd, "wb") as out:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in names:
                    data = (version_dir / name).read_bytes()
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mode = 0o644
                    info.mtime = int(manifest.created.timestamp())
                    tar.addfile(info, io.BytesIO(data))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target, manifest


def announcement_for(bundle: Path, manifest: ModelManifest, channel: str, base_url: str) -> ModelAnnouncement:
    """The announcement of a written bundle served under `base_url`."""
    sha = hashlib.sha256()
    with bundle.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return ModelAnnouncement(
        model_id=manifest.model_id,
        version=manifest.version,
        channel=channel,
        url=f"{base_url.rstrip('/')}/{bundle.name}",
        sha256=sha.hexdigest(),
        length=bundle.stat().st_size,
        published_at=datetime.now(timezone.utc),
    )


def announce(announcement: ModelAnnouncement, host: str, port: int, *, timeout_s: float = 10.0) -> None:
    """Publish `announcement` retained, QoS 1, and wait for the broker's PUBACK."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="")
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else connected.set()
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise PublishError(f"cannot connect to the broker {host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise PublishError(f"the broker {host}:{port} did not accept the connection in {timeout_s}s")
        info = client.publish(
            model_announcements(announcement.channel), announcement.to_json(), qos=1, retain=True
        )
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise PublishError(
                f"the broker {host}:{port} did not acknowledge the announcement in {timeout_s}s"
            )
    finally:
        client.disconnect()
        client.loop_stop()


def publish(
    version_dir: Path,
    *,
    channel: str | None,
    base_url: str,
    webroot: Path,
    mqtt_host: str | None = None,
    mqtt_port: int = 1883,
) -> ModelAnnouncement:
    """Bundle `version_dir` into `webroot` and, with `mqtt_host`, announce it; returns the announcement.

    `channel` defaults to the manifest's. The bundle is in place before the announcement
    goes out, so an agent never fetches a URL that does not exist yet.
    """
    bundle, manifest = write_bundle(version_dir, webroot)
    try:
        announcement = announcement_for(bundle, manifest, channel or manifest.channel, base_url)
    except ValueError as exc:
        raise PublishError(f"cannot announce {manifest.label}: {exc}") from exc
    if mqtt_host is not None:
        announce(announcement, mqtt_host, mqtt_port)
    return announcement
