"""Signing models for the fleet: key pairs, release-key certificates, revocations, signatures.

Two tiers of keys (formats: `agent.contract.signatures`):

- a **root key**, kept offline: ``robotpm-train keygen --key-id root-2026 --out /offline``.
  Its ``.pub`` goes into every agent's ``agent.model.trusted_keys`` directory; it signs only
  release-key certificates (``certify-key``) and revocation lists (``revoke``);
- **release keys**, on the trainer: ``keygen --key-id fleet-2026-07``, then
  ``certify-key --root root.key --key fleet-2026-07.pub --channels stable --valid-days 90``
  writes ``fleet-2026-07.cert`` beside the release key. A release key signs manifests
  (``sign``) and announcements (``publish``); each signature carries the certificate, so
  agents need nothing new when a release key is rotated.

``sign`` sets ``signing_key_id`` (and optionally ``expires`` and ``channel``) in
``manifest.json``, rewrites it as the trainer always writes manifests
(`ModelManifest.to_json`), and writes ``manifest.sig``: a detached signed document over the
exact bytes of the new ``manifest.json``. The manifest carries the sha256 and length of
``model.onnx``, so the model is covered too. Private keys are unencrypted PEM (PKCS8) files of
mode 0600: keep the root key off any networked machine. The agent side is `agent.models.keys`.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from agent.contract.errors import SignatureFormatError
from agent.contract.manifest import MANIFEST_FILE, SIGNATURE_FILE, ModelManifest
from agent.contract.signatures import (
    CERTIFICATE_SUFFIX,
    DETACHED,
    KEY_ID_PATTERN,
    PUBLIC_KEY_SUFFIX,
    ReleaseKeyCertificate,
    RevocationList,
    SignedDocument,
    signing_input,
)
from trainer.atomicfile import write_file_atomically
from trainer.errors import TrainerError
from trainer.registry import verified_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_SUFFIX = ".key"
MAX_DOCUMENT_BYTES = 64 * 1024


class SigningError(TrainerError):
    """A key cannot be made or read, or a model directory cannot be signed."""


def check_key_id(key_id: str) -> str:
    """`key_id` if it is usable as a key id (and file name); raises `SigningError` otherwise."""
    if not re.match(KEY_ID_PATTERN, key_id):
        raise SigningError(f"key id {key_id!r} does not match {KEY_ID_PATTERN}")
    return key_id


def generate_key_pair(key_id: str, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<key_id>.key`` (mode 0600) and ``<key_id>.pub`` into `out_dir`; returns both paths.

    Refuses to overwrite an existing key of that id.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    check_key_id(key_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{key_id}{PRIVATE_KEY_SUFFIX}"
    public_path = out_dir / f"{key_id}{PUBLIC_KEY_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise SigningError(f"{path} already exists; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL with mode 0600: the private key is never readable by others, not even for an instant.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    write_file_atomically(public_path, public_pem)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM PKCS8 Ed25519 private key; raises `SigningError` naming the problem."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = _load_pem(path, "private", lambda data: load_pem_private_key(data, password=None))
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM SubjectPublicKeyInfo Ed25519 public key; raises `SigningError` naming the problem."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = _load_pem(path, "public", load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def _load_pem(path: Path, kind: str, load: Callable[[bytes], object]) -> object:
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return load(path.read_bytes())
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the {kind} key: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        qualifier = "an unencrypted PEM private" if kind == "private" else "a PEM public"
        raise SigningError(f"{path}: not {qualifier} key: {exc}") from exc


def sign_document(private_key: Ed25519PrivateKey, key_id: str, purpose: str, body: bytes) -> SignedDocument:
    """A root-signed document (a certificate or a revocation list) over `body`."""
    signature = private_key.sign(signing_input(purpose, body))
    return SignedDocument(purpose, check_key_id(key_id), signature, body)


def certify_release_key(
    root_key: Path,
    release_public: Path,
    *,
    channels: Sequence[str],
    expires: datetime,
    root_key_id: str | None = None,
    key_id: str | None = None,
    out: Path | None = None,
) -> Path:
    """Sign a release key's certificate with the root key; writes ``<key_id>.cert`` (beside the key).

    Key ids default to the files' stems. Returns the certificate's path.
    """
    from cryptography.hazmat.primitives import serialization

    root = load_private_key(root_key)
    public = load_public_key(release_public)
    key_id = check_key_id(key_id or release_public.stem)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    now = datetime.now(timezone.utc)
    if expires <= now:
        raise SigningError(f"the certificate would expire at {expires.isoformat()}, which is past")
    try:
        certificate = ReleaseKeyCertificate(
            key_id=key_id,
            public_key=base64.b64encode(raw).decode("ascii"),
            channels=tuple(channels),
            issued=now,
            expires=expires,
        )
    except ValueError as exc:
        raise SigningError(f"cannot certify {key_id}: {exc}") from exc
    document = sign_document(root, root_key_id or root_key.stem, "release-key", certificate.to_json())
    target = out or release_public.with_name(f"{key_id}{CERTIFICATE_SUFFIX}")
    write_file_atomically(target, document.to_bytes())
    return target


def write_revocations(
    root_key: Path,
    revoked: Sequence[str],
    *,
    version: int,
    out: Path,
    root_key_id: str | None = None,
) -> RevocationList:
    """Write a root-signed revocation list naming the `revoked` release key ids, as `version`.

    Agents keep the list with the highest version, so each new list must say everything still
    revoked and carry a higher version than the last.
    """
    root = load_private_key(root_key)
    try:
        revocations = RevocationList(
            version=version,
            revoked_keys=tuple(check_key_id(k) for k in revoked),
            issued=datetime.now(timezone.utc),
        )
    except ValueError as exc:
        raise SigningError(f"cannot write the revocation list: {exc}") from exc
    document = sign_document(root, root_key_id or root_key.stem, "revocations", revocations.to_json())
    write_file_atomically(out, document.to_bytes())
    return revocations


def read_revocations(path: Path) -> RevocationList:
    """The body of a revocation list this trainer wrote (for carrying its ids into the next one)."""
    try:
        document = SignedDocument.parse(path.read_bytes(), max_bytes=MAX_DOCUMENT_BYTES)
        return RevocationList.model_validate_json(document.body)
    except (OSError, ValueError, SignatureFormatError) as exc:
        raise SigningError(f"{path}: not a revocation list: {exc}") from exc


class ReleaseSigner:
    """A release key and its certificate: signs manifests and announcements."""

    def __init__(self, private_key: Path, certificate: Path | None = None, key_id: str | None = None) -> None:
        self._key = load_private_key(private_key)
        self.key_id = check_key_id(key_id or private_key.stem)
        cert_path = certificate or private_key.with_name(f"{self.key_id}{CERTIFICATE_SUFFIX}")
        try:
            self._certificate = SignedDocument.parse(cert_path.read_bytes(), max_bytes=MAX_DOCUMENT_BYTES)
        except FileNotFoundError:
            raise SigningError(
                f"no certificate {cert_path} for release key {self.key_id!r}: have the root key certify it "
                "(robotpm-train certify-key)"
            ) from None
        except (OSError, SignatureFormatError) as exc:
            raise SigningError(f"{cert_path}: not a release-key certificate: {exc}") from exc
        if self._certificate.purpose != "release-key":
            raise SigningError(f"{cert_path}: a {self._certificate.purpose!r} document, not a certificate")
        try:
            self.certificate = ReleaseKeyCertificate.model_validate_json(self._certificate.body)
        except ValueError as exc:
            raise SigningError(f"{cert_path}: not a release-key certificate: {exc}") from exc
        if self.certificate.key_id != self.key_id:
            raise SigningError(f"{cert_path} certifies {self.certificate.key_id!r}, not {self.key_id!r}")
        from cryptography.hazmat.primitives import serialization

        raw = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if raw != self.certificate.raw_public_key:
            raise SigningError(f"{cert_path} certifies another public key than {private_key}")

    def sign(self, purpose: str, body: bytes, *, detached: bool = False) -> SignedDocument:
        """A signed document of `purpose` over `body` (empty body if `detached`), with the certificate."""
        signature = self._key.sign(signing_input(purpose, body))
        return SignedDocument(
            purpose, self.key_id, signature, DETACHED if detached else body, self._certificate
        )


def sign_model_dir(
    model_dir: Path,
    private_key: Path,
    key_id: str | None = None,
    *,
    certificate: Path | None = None,
    expires: datetime | None = None,
    channel: str | None = None,
) -> ModelManifest:
    """Sign a model directory in place with a release key; returns the signed manifest.

    The certificate defaults to ``<key_id>.cert`` beside the private key. The manifest must
    be intact (``model.onnx`` matches its sha256 and length), so a signature never vouches
    for a model the manifest does not describe. ``expires`` and ``channel`` replace the
    manifest's when given; the certificate must cover the channel. ``manifest.sig`` is
    written first, then ``manifest.json``, each by an atomic rename; a reader in between sees
    a bad signature, which the agent refuses and checks again when the files change.
    """
    signer = ReleaseSigner(private_key, certificate, key_id)
    manifest = verified_manifest(model_dir, SigningError)
    update: dict[str, object] = {"signing_key_id": signer.key_id}
    if expires is not None:
        update["expires"] = expires
    if channel is not None:
        update["channel"] = channel
    signed = ModelManifest.model_validate({**manifest.model_dump(), **update})
    if not signer.certificate.allows(signed.channel):
        raise SigningError(
            f"release key {signer.key_id!r} is certified for channels {list(signer.certificate.channels)}, "
            f"not {signed.channel!r}"
        )
    if signer.certificate.expired(datetime.now(timezone.utc) + timedelta(seconds=1)):
        raise SigningError(f"the certificate of {signer.key_id!r} expired at {signer.certificate.expires}")
    data = signed.to_json().encode()
    write_file_atomically(model_dir / SIGNATURE_FILE, signer.sign("manifest", data, detached=True).to_bytes())
    write_file_atomically(model_dir / MANIFEST_FILE, data)
    return signed
