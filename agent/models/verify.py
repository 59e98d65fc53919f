"""Signed models: the agent's trusted keys, and checking a model directory before it is loaded.

A signed model directory holds, beside ``model.onnx`` and ``manifest.json``, the file
``manifest.sig``: the raw 64-byte Ed25519 signature over the exact bytes of
``manifest.json``. The manifest names its key (``signing_key_id``) and carries the
sha256 and length of ``model.onnx``, so the signature covers the model transitively.
`ModelVerifier.read_manifest` checks the signature on the bytes it then parses, and
`agent.models.scorer.OnnxScorer.load` checks the model bytes against that parsed manifest
before onnxruntime sees them: nothing unsigned is ever parsed by onnxruntime.

**Trusted keys.** ``agent.model.trusted_keys`` names a directory of ``<key_id>.pub``
files (PEM, SubjectPublicKeyInfo, Ed25519; ``robotpm-train keygen`` writes them). They
are read once, when the agent starts; adding or revoking a key takes a restart. A
directory that is missing, holds no key, or holds a file that is not an Ed25519 public
key is a configuration error (exit code 2), never a silent "no keys".

**When signatures are in force** (``trusted_keys`` is set; ``require_signature = true``
without it is a configuration error), every model in the store must carry a valid
signature from a trusted key, else it is refused with `ModelRejectedError` naming the
reason: no signature, no or unknown key id, bad signature (the manifest changed after
signing, or another key signed it). A ``model.onnx`` replaced after signing no longer
matches the signed sha256 and is refused by the scorer before it is parsed. A refused
model never replaces the current one, which keeps serving.

**Expiry** is checked for every model in the store, signed or not: a manifest whose
``expires`` is not in the future is refused. For a signed model it bounds how long a
leaked or superseded signed model can be replayed; for an unsigned one it is only the
trainer's stated intent, but honouring it can only refuse a model, never admit one, and
ignoring a field the manifest carries would be another silent no-op. The trainer writes
no ``expires`` unless asked (``robotpm-train sign --valid-days``), so models without it
load as before. Expiry is judged by the robot's wall clock when a model is loaded; a
model already serving when it expires keeps serving until a newer one arrives, and is
refused at the next start.

**The bundled model is exempt** from both checks. It ships inside the installed
package, beside the agent's code and by the same channel (a distribution package
verified by the system's package manager): anyone able to replace it could replace the
code that would check it, so a signature on it would prove nothing. It is also the
fallback that must always load, so an expiry on it could only ever brick a robot.

``cryptography`` is imported only when keys are loaded, so an agent without signing
configured does not pay for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agent.config import ModelConfig
from agent.contract.errors import ConfigError, ManifestError
from agent.contract.manifest import MANIFEST_FILE, SIGNATURE_FILE, ModelManifest
from agent.contract.signatures import KEY_ID_PATTERN, PUBLIC_KEY_SUFFIX, SIGNATURE_BYTES
from agent.errors import ModelRejectedError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_MANIFEST_BYTES: Final = 8 * 1024 * 1024
"""A manifest larger than this is refused before it is read in full."""

_KEY_ID = re.compile(KEY_ID_PATTERN)
_CONFIG_KEY = "agent.model.trusted_keys"


class TrustedKeys:
    """Ed25519 public keys by key id: the signers whose models the agent accepts."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    def __repr__(self) -> str:
        return f"TrustedKeys({sorted(self._keys)})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The trusted key ids, sorted."""
        return tuple(sorted(self._keys))

    @classmethod
    def load(cls, directory: Path) -> TrustedKeys:
        """Read every ``<key_id>.pub`` in `directory`; `ConfigError` if one is unusable or none is there."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            paths = sorted(p for p in directory.iterdir() if p.name.endswith(PUBLIC_KEY_SUFFIX))
        except FileNotFoundError:
            raise ConfigError(str(directory), _CONFIG_KEY, "no such directory") from None
        except OSError as exc:
            raise ConfigError(str(directory), _CONFIG_KEY, f"cannot list: {exc.strerror}") from None
        keys: dict[str, Ed25519PublicKey] = {}
        for path in paths:
            key_id = path.name[: -len(PUBLIC_KEY_SUFFIX)]
            if not _KEY_ID.match(key_id):
                raise ConfigError(
                    str(path), _CONFIG_KEY, f"key id {key_id!r} does not match {KEY_ID_PATTERN}"
                )
            try:
                key = load_pem_public_key(path.read_bytes())
            except OSError as exc:
                raise ConfigError(str(path), _CONFIG_KEY, f"cannot read: {exc.strerror}") from None
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise ConfigError(str(path), _CONFIG_KEY, f"not a PEM public key: {exc}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(str(path), _CONFIG_KEY, f"not an Ed25519 key ({type(key).__name__})")
            keys[key_id] = key
        if not keys:
            raise ConfigError(str(directory), _CONFIG_KEY, f"no <key_id>{PUBLIC_KEY_SUFFIX} file in it")
        return cls(keys)

    def verify(self, model_dir: Path, manifest_bytes: bytes) -> str:
        """Check ``manifest.sig`` against `manifest_bytes`; returns the signing key id.

        Raises `ModelRejectedError` naming the reason: no signature, no or unknown
        key id, or a bad signature.
        """
        from cryptography.exceptions import InvalidSignature

        sig_path = model_dir / SIGNATURE_FILE
        try:
            signature = sig_path.read_bytes()
        except FileNotFoundError:
            raise ModelRejectedError(f"{model_dir}: no signature ({SIGNATURE_FILE} is missing)") from None
        except OSError as exc:
            raise ModelRejectedError(f"{sig_path}: cannot read the signature: {exc.strerror}") from None
        key_id = _signing_key_id(model_dir, manifest_bytes)
        key = self._keys.get(key_id)
        if key is None:
            raise ModelRejectedError(
                f"{model_dir}: signed by unknown key id {key_id!r} (trusted: {', '.join(self.key_ids)})"
            )
        try:
            if len(signature) != SIGNATURE_BYTES:
                raise InvalidSignature
            key.verify(signature, manifest_bytes)
        except InvalidSignature:
            raise ModelRejectedError(
                f"{model_dir}: bad signature: {MANIFEST_FILE} was changed after signing, "
                f"or key {key_id!r} did not sign it"
            ) from None
        return key_id


class ModelVerifier:
    """What a model from the store must pass before its ONNX bytes are read: signature and expiry.

    Without trusted keys only expiry is checked (see the module docstring).
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: TrustedKeys | None = None) -> None:
        self._keys = keys

    def __repr__(self) -> str:
        return f"ModelVerifier(keys={self._keys!r})"

    @classmethod
    def from_config(cls, config: ModelConfig) -> ModelVerifier:
        """The verifier `config` asks for; loads the trusted keys (`ConfigError` if unusable)."""
        if config.trusted_keys is None:
            return cls(None)
        return cls(TrustedKeys.load(config.trusted_keys))

    @property
    def keys(self) -> TrustedKeys | None:
        """The trusted keys, or None when signatures are not in force."""
        return self._keys

    def read_manifest(self, model_dir: Path) -> ModelManifest:
        """Read ``manifest.json``, verify its signature on the exact bytes, parse them, check expiry."""
        path = model_dir / MANIFEST_FILE
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
        if len(data) > MAX_MANIFEST_BYTES:
            raise ModelRejectedError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
        if self._keys is not None:
            self._keys.verify(model_dir, data)
        manifest = ModelManifest.from_json(data, source=str(path))
        check_expiry(manifest, source=str(model_dir))
        return manifest


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


def _signing_key_id(model_dir: Path, manifest_bytes: bytes) -> str:
    """The ``signing_key_id`` of raw manifest bytes, read with the plain JSON parser only."""
    try:
        document = json.loads(manifest_bytes)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both derive from it
        raise ModelRejectedError(f"{model_dir}: {MANIFEST_FILE} is not JSON") from None
    value = document.get("signing_key_id") if isinstance(document, dict) else None
    if not isinstance(value, str) or not value:
        raise ModelRejectedError(f"{model_dir}: the manifest names no signing_key_id")
    return value
