"""Signing models for the fleet: Ed25519 key pairs, and signatures over a model's manifest.

``robotpm-train keygen`` makes a key pair: ``<key_id>.key`` (the private key, PEM
PKCS8, unencrypted, mode 0600: keep it on the trainer, or better in a secrets store)
and ``<key_id>.pub`` (the public key, PEM SubjectPublicKeyInfo), which goes into the
agents' ``agent.model.trusted_keys`` directory.

``robotpm-train sign`` (or ``--sign-key`` on a training run) sets ``signing_key_id``
(and optionally ``expires``) in ``manifest.json``, rewrites it as the trainer always
writes manifests (`ModelManifest.to_json`), and writes ``manifest.sig``: the Ed25519
signature over the exact bytes of the new ``manifest.json``. The manifest carries the
sha256 and length of ``model.onnx``, so the model is covered too. The agent side is
`agent.models.verify`.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agent.contract.manifest import MANIFEST_FILE, SIGNATURE_FILE, ModelManifest
from agent.contract.signatures import KEY_ID_PATTERN, PUBLIC_KEY_SUFFIX
from trainer.errors import TrainerError
from trainer.registry import verified_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PRIVATE_KEY_SUFFIX = ".key"


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
    _write_atomically(public_path, public_pem, 0o644)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PEM PKCS8 Ed25519 private key; raises `SigningError` naming the problem."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the private key: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningError(f"{path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def sign_model_dir(
    model_dir: Path, private_key: Path, key_id: str, *, expires: datetime | None = None
) -> ModelManifest:
    """Sign a model directory in place with `private_key` as `key_id`; returns the signed manifest.

    The manifest must be intact (``model.onnx`` matches its sha256 and length), so a
    signature never vouches for a model the manifest does not describe. ``expires``
    replaces the manifest's expiry when given; otherwise the manifest keeps its own.
    ``manifest.sig`` is written first, then ``manifest.json``, each by an atomic
    rename; a reader in between sees a bad signature, which the agent refuses and
    checks again when the files change.
    """
    check_key_id(key_id)
    key = load_private_key(private_key)
    manifest = verified_manifest(model_dir, SigningError)
    update: dict[str, object] = {"signing_key_id": key_id}
    if expires is not None:
        update["expires"] = expires
    signed = ModelManifest.model_validate({**manifest.model_dump(), **update})
    data = signed.to_json().encode()
    signature = key.sign(data)
    key.public_key().verify(signature, data)  # raises InvalidSignature if anything went wrong
    _write_atomically(model_dir / SIGNATURE_FILE, signature, 0o644)
    _write_atomically(model_dir / MANIFEST_FILE, data, 0o644)
    return signed


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
