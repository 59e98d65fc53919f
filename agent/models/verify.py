"""What a model must pass before onnxruntime sees a byte of it: signature, expiry, size, static checks.

`ModelVerifier.admit` takes a model directory through, in this order, each step refusing
with `ModelRejectedError` naming the reason:

1. **Signature** (when ``agent.model.trusted_keys`` is set): ``manifest.sig`` is a detached
   signed document (`agent.contract.signatures`) over the exact bytes of ``manifest.json``,
   by a release key whose certificate a trusted root signed, unexpired and not revoked
   (`agent.models.keys`). Only the signature file's header is read before this holds: the
   manifest is not parsed (neither JSON nor pydantic) until its signature has been checked.
2. **The manifest** is parsed; it must name the key that signed it (``signing_key_id``),
   on a channel the key's certificate covers, and not have expired (``expires``; checked for
   unsigned models too: honouring it can only refuse).
3. **The model bytes** are read once, at most ``agent.model.max_model_bytes`` of them, and
   must match the manifest's length and sha256; those very bytes (held in memory, never read
   again from disk) are what the static checks, the isolated probe and the session see.
4. **Static checks** (`agent.models.static_check`): well-formed protobuf, no external data,
   operators on the allow-list, the interface the manifest and feature spec describe, enough
   golden vectors.

Announcements go through `verify_announcement`: with keys in force they must be signed
documents by a release key certified for their channel, and nothing in them is parsed first.

**The bundled model is exempt** from steps 1 and 2 (``trusted_source``): it ships inside the
installed package, beside the agent's code and by the same channel, so a signature on it would
prove nothing the code's own integrity does not; and it is the fallback that must always load,
so an expiry on it could only brick a robot. Steps 3 and 4 still apply to it.

``cryptography`` is imported only when keys are loaded, so an agent without signing configured
does not pay for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from agent.config import ModelConfig
from agent.contract.announcement import MAX_MANIFEST_BYTES, MAX_SIGNED_DOCUMENT_BYTES, ModelAnnouncement
from agent.contract.errors import ManifestError, SignatureFormatError
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, ModelManifest
from agent.contract.signatures import SignedDocument, is_signed_document
from agent.errors import ModelLoadError, ModelRejectedError
from agent.models.keys import Keyring, Signer
from agent.models.static_check import StaticPolicy, check_model
from agent.models.store import ModelStore

DEFAULT_MAX_MODEL_BYTES: Final = 16 * 1024 * 1024
"""``agent.model.max_model_bytes`` unless configured."""


@dataclass(frozen=True, slots=True)
class VerifiedManifest:
    """A manifest that passed steps 1 and 2, with the exact bytes its signature covers."""

    directory: Path
    manifest: ModelManifest
    manifest_bytes: bytes
    signer: Signer | None


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    """A model directory that passed `ModelVerifier.admit`, with the exact bytes that were checked."""

    directory: Path
    manifest: ModelManifest
    manifest_bytes: bytes
    model_bytes: bytes
    signer: Signer | None


class ModelVerifier:
    """Checks models and announcements against the trusted keys and the static policy (module docstring).

    Without keys, signatures are not checked (everything else is).
    """

    __slots__ = ("_keys", "_max_model_bytes", "_policy")

    def __init__(
        self,
        keys: Keyring | None = None,
        policy: StaticPolicy | None = None,
        *,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    ) -> None:
        self._keys = keys
        self._policy = policy or StaticPolicy()
        self._max_model_bytes = max_model_bytes

    def __repr__(self) -> str:
        return f"ModelVerifier(keys={self._keys!r})"

    @classmethod
    def from_config(cls, config: ModelConfig) -> ModelVerifier:
        """The verifier `config` asks for; (re)loads the trusted keys (`ConfigError` if unusable).

        Verifiers of one config share their keyring (`Keyring.shared`): a reload reaches all.
        """
        keys = None
        if config.trusted_keys is not None:
            keys = Keyring.shared(config.trusted_keys, ModelStore(config.directory).revocations_file)
        policy = StaticPolicy(
            allowed_domains=frozenset(config.allowed_op_domains),
            allowed_ops=None if config.allowed_ops is None else frozenset(config.allowed_ops),
            min_golden=config.min_golden_vectors,
        )
        return cls(keys, policy, max_model_bytes=config.max_model_bytes)

    @property
    def keys(self) -> Keyring | None:
        """The trusted keys, or None when signatures are not in force."""
        return self._keys

    @property
    def max_model_bytes(self) -> int:
        """The largest ``model.onnx`` accepted."""
        return self._max_model_bytes

    def reload_keys(self, directory: Path | None = None) -> None:
        """Read ``trusted_keys`` (or a new `directory`) again (`Keyring.reload`); `ConfigError` keeps them."""
        if self._keys is not None:
            self._keys.reload(directory)

    def read_manifest(self, model_dir: Path, *, now: datetime | None = None) -> ModelManifest:
        """The manifest of `model_dir` after steps 1 and 2 (signature, then parse, key, channel, expiry)."""
        return self.verify_manifest(model_dir, now=now).manifest

    def verify_manifest(
        self, model_dir: Path, *, now: datetime | None = None, expiry: bool = True
    ) -> VerifiedManifest:
        """Steps 1 and 2 of the module docstring: the signature, then the parsed manifest.

        ``expiry=False`` leaves the manifest's own expiry to the caller (`check_expiry`); the
        signing key's expiry is checked regardless.
        """
        path = model_dir / MANIFEST_FILE
        data = _read_capped(path, MAX_MANIFEST_BYTES)
        signer = None
        if self._keys is not None:
            signer = self._check_signature(model_dir, data, now)
        manifest = ModelManifest.from_json(data, source=str(path))
        if signer is not None:
            if manifest.signing_key_id != signer.key_id:
                raise ModelRejectedError(
                    f"{model_dir}: the manifest names key {manifest.signing_key_id!r}, "
                    f"{signer.key_id!r} signed it"
                )
            signer.check_channel(manifest.channel, str(model_dir))
        if expiry:
            check_expiry(manifest, source=str(model_dir), now=now)
        return VerifiedManifest(model_dir, manifest, data, signer)

    def check_content(self, verified: VerifiedManifest) -> VerifiedModel:
        """Steps 3 and 4: the model bytes against the manifest, then the static checks."""
        manifest = verified.manifest
        model_bytes = read_verified_model(verified.directory / MODEL_FILE, manifest, self._max_model_bytes)
        check_model(model_bytes, manifest, self._policy)
        return VerifiedModel(
            verified.directory, manifest, verified.manifest_bytes, model_bytes, verified.signer
        )

    def admit(self, model_dir: Path, *, trusted_source: bool = False) -> VerifiedModel:
        """Take `model_dir` through every step of the module docstring; `trusted_source` skips 1 and 2."""
        if trusted_source:
            data = _read_capped(model_dir / MANIFEST_FILE, MAX_MANIFEST_BYTES)
            manifest = ModelManifest.from_json(data, source=str(model_dir / MANIFEST_FILE))
            return self.check_content(VerifiedManifest(model_dir, manifest, data, None))
        return self.check_content(self.verify_manifest(model_dir))

    def verify_announcement(self, payload: bytes) -> ModelAnnouncement:
        """An announcement payload checked and parsed; `ModelRejectedError` names why it is refused."""
        if len(payload) > MAX_SIGNED_DOCUMENT_BYTES:
            raise ModelRejectedError(
                f"announcement of {len(payload)} bytes is over {MAX_SIGNED_DOCUMENT_BYTES}"
            )
        signer: Signer | None = None
        body = payload
        if is_signed_document(payload):
            try:
                document = SignedDocument.parse(payload, max_bytes=MAX_SIGNED_DOCUMENT_BYTES)
            except SignatureFormatError as exc:
                raise ModelRejectedError(f"announcement: {exc}") from None
            if self._keys is not None:
                signer = self._keys.verify(document, "announcement", source="announcement")
            body = document.body
        elif self._keys is not None:
            raise ModelRejectedError("announcement is not signed, and signatures are required")
        try:
            announcement = ModelAnnouncement.from_json(body)
        except ValidationError as exc:
            raise ModelRejectedError(
                f"not a model announcement: {exc.error_count()} error(s), first: {exc.errors()[0]['msg']}"
            ) from None
        if signer is not None:
            signer.check_channel(announcement.channel, f"announcement of {announcement.label}")
        return announcement

    def _check_signature(self, model_dir: Path, manifest_bytes: bytes, now: datetime | None) -> Signer:
        assert self._keys is not None
        sig_path = model_dir / SIGNATURE_FILE
        try:
            raw = _read_capped(sig_path, MAX_SIGNED_DOCUMENT_BYTES)
        except ManifestError:
            raise ModelRejectedError(f"{model_dir}: no signature ({SIGNATURE_FILE} is missing)") from None
        try:
            document = SignedDocument.parse(raw, max_bytes=MAX_SIGNED_DOCUMENT_BYTES)
        except SignatureFormatError as exc:
            raise ModelRejectedError(f"{model_dir}: bad signature: {SIGNATURE_FILE}: {exc}") from None
        if document.body:
            raise ModelRejectedError(
                f"{model_dir}: bad signature: {SIGNATURE_FILE} is not a detached signature"
            )
        return self._keys.verify(document, "manifest", source=str(model_dir), body=manifest_bytes, now=now)


def check_expiry(manifest: ModelManifest, *, source: str, now: datetime | None = None) -> None:
    """Raise `ModelRejectedError` when the manifest's ``expires`` is not after `now` (default: the clock).

    An ``expires`` without a time zone is read as UTC.
    """
    if manifest.expires is None:
        return
    expires = manifest.expires
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    if expires <= now:
        raise ModelRejectedError(f"{source}: {manifest.label} expired at {expires.isoformat()}")


def read_verified_model(
    path: Path, manifest: ModelManifest, max_bytes: int = DEFAULT_MAX_MODEL_BYTES
) -> bytes:
    """The model bytes, read once (at most `max_bytes`), after their length and sha256 match the manifest."""
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the model: {exc.strerror}") from exc
    if len(data) != manifest.length or len(data) > max_bytes:
        size = f"over {max_bytes}" if len(data) > max_bytes else str(len(data))
        raise ModelRejectedError(
            f"{path}: size {size} bytes, manifest says {manifest.length} (cap {max_bytes})"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ModelRejectedError(f"{path}: sha256 {digest[:12]}… does not match the manifest")
    return data


def _read_capped(path: Path, cap: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(cap + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(data) > cap:
        raise ModelRejectedError(f"{path}: larger than {cap} bytes")
    return data
