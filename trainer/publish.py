"""Publishing a model version to a fleet: a bundle in a web root, a signed announcement, a rollback.

``robotpm-train publish VERSION_DIR --base-url URL --out WEBROOT --key RELEASE.key`` writes
``WEBROOT/<model_id>-v<version>.tar`` (see `agent.contract.announcement` for the format) and a
`ModelAnnouncement` for it, signed by the release key (`trainer.signing.ReleaseSigner`), to
``WEBROOT/channels/<channel>.announcement`` (the channel's index, which agents poll with
``agent.model.index_url``) and, with a broker, retained with QoS 1 on
``robotpm/v1/models/<channel>``; the broker connection (`trainer.broker`) uses TLS and
credentials. The bundle is in place before the announcement goes out, so an agent never fetches
a URL that does not exist yet. Sign the version first (``robotpm-train sign``): agents with
``trusted_keys`` refuse unsigned models and unsigned announcements.

**Rollback reaches the fleet as a new version.** Agents never go down in version (their
version floor), so `rollback_to` republishes a known-good version's model as a *new, higher*
version: same ``model.onnx``, a manifest with the next version number, a fresh ``created`` and
``training["republished_from"]``, signed again. Agents take it like any newer model.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from datetime import datetime, timezone
from pathlib import Path

from agent.contract.announcement import ModelAnnouncement, bundle_name
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, ModelManifest
from agent.contract.signatures import REVOCATIONS_FILE
from agent.contract.topics import model_announcements
from trainer.atomicfile import write_file_atomically
from trainer.broker import BrokerSettings, connect, disconnect
from trainer.errors import TrainerError
from trainer.registry import METRICS_FILE, Registry, verified_manifest
from trainer.signing import ReleaseSigner, sign_model_dir

INDEX_DIR = "channels"
INDEX_SUFFIX = ".announcement"
REPUBLISHED_FROM = "republished_from"


class PublishError(TrainerError):
    """The version cannot be bundled, announced or republished."""


def index_path(webroot: Path, channel: str) -> Path:
    """Where the channel's index (its latest signed announcement) lives in the web root."""
    return webroot / INDEX_DIR / f"{channel}{INDEX_SUFFIX}"


def write_bundle(
    version_dir: Path, webroot: Path, *, revocations: Path | None = None
) -> tuple[Path, ModelManifest]:
    """Write the bundle of `version_dir` into `webroot` (atomically); returns its path and the manifest.

    The manifest must describe ``model.onnx`` (sha256 and length), so a bundle never
    ships a model its manifest does not vouch for. Members are written in a fixed
    order with fixed owners, modes and times, so the same version gives the same bytes.
    `revocations` (a root-signed revocation list) travels in the bundle to every agent.
    """
    manifest = verified_manifest(version_dir, PublishError)
    members = [(name, version_dir / name) for name in (MODEL_FILE, MANIFEST_FILE)]
    if (version_dir / SIGNATURE_FILE).exists():
        members.append((SIGNATURE_FILE, version_dir / SIGNATURE_FILE))
    if revocations is not None:
        members.append((REVOCATIONS_FILE, revocations))
    target = webroot / bundle_name(manifest.model_id, manifest.version)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in members:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(manifest.created.timestamp())
            tar.addfile(info, io.BytesIO(data))
    write_file_atomically(target, buffer.getvalue())
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


def announcement_payload(announcement: ModelAnnouncement, signer: ReleaseSigner | None) -> bytes:
    """The bytes to publish: the announcement signed by `signer`, or its bare JSON without one."""
    body = announcement.to_json()
    return body if signer is None else signer.sign("announcement", body).to_bytes()


def announce(payload: bytes, channel: str, broker: BrokerSettings, *, timeout_s: float = 10.0) -> None:
    """Publish `payload` retained, QoS 1, on the channel's topic and wait for the broker's PUBACK."""
    client = connect(broker, timeout_s=timeout_s)
    try:
        info = client.publish(model_announcements(channel), payload, qos=1, retain=True)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise PublishError(f"the broker {broker.host}:{broker.port} did not acknowledge in {timeout_s}s")
    finally:
        disconnect(client)


def publish(
    version_dir: Path,
    *,
    channel: str | None,
    base_url: str,
    webroot: Path,
    signer: ReleaseSigner | None = None,
    broker: BrokerSettings | None = None,
    revocations: Path | None = None,
) -> ModelAnnouncement:
    """Bundle `version_dir` into `webroot`, write the channel index and, with `broker`, announce it.

    `channel` defaults to the manifest's and must equal it (agents check that the model they
    install is the channel's); sign the version for another channel with ``sign --channel``.
    Returns the announcement.
    """
    if broker is not None:
        broker.check()
    manifest = verified_manifest(version_dir, PublishError)
    channel = channel or manifest.channel
    if channel != manifest.channel:
        raise PublishError(
            f"{manifest.label} is signed for channel {manifest.channel!r}, not {channel!r}: "
            f"sign it with --channel {channel}"
        )
    if signer is not None and not signer.certificate.allows(channel):
        raise PublishError(f"release key {signer.key_id!r} is not certified for channel {channel!r}")
    bundle, manifest = write_bundle(version_dir, webroot, revocations=revocations)
    try:
        announcement = announcement_for(bundle, manifest, channel, base_url)
    except ValueError as exc:
        raise PublishError(f"cannot announce {manifest.label}: {exc}") from exc
    payload = announcement_payload(announcement, signer)
    write_file_atomically(index_path(webroot, channel), payload)
    if broker is not None:
        announce(payload, channel, broker)
    return announcement


def rollback_to(
    registry: Registry,
    version: int,
    *,
    signer_key: Path,
    certificate: Path | None = None,
    new_version: int | None = None,
) -> Path:
    """Republish registry `version` as a new, higher version (module docstring); returns its directory.

    `new_version` defaults to the registry's next version; it must be higher than every
    registered one (agents may already run any of them).
    """
    source = registry.path(version)
    if not source.is_dir():
        raise PublishError(f"{source}: no such version to roll back to")
    manifest = verified_manifest(source, PublishError)
    target = registry.next_version() if new_version is None else new_version
    if target < registry.next_version():
        raise PublishError(f"version {target} is not higher than every registered version")
    republished = ModelManifest.model_validate(
        {
            **manifest.model_dump(),
            "version": target,
            "created": datetime.now(timezone.utc),
            "training": {**manifest.training, REPUBLISHED_FROM: str(version)},
            "signing_key_id": None,
            "expires": None,
        }
    )
    files = {MODEL_FILE: (source / MODEL_FILE).read_bytes(), MANIFEST_FILE: republished.to_json().encode()}
    if (source / METRICS_FILE).exists():
        files[METRICS_FILE] = (source / METRICS_FILE).read_bytes()
    directory = registry.write(target, files)
    sign_model_dir(directory, signer_key, certificate=certificate)
    return directory
