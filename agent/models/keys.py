"""The keys the agent trusts, and checking a signed document against them (two tiers).

The formats are in `agent.contract.signatures`. ``agent.model.trusted_keys`` names a
directory of **root** public keys, ``<root_id>.pub``, and optionally a root-signed
``revocations.signed``. A document a release key signed (a manifest, an announcement) is
accepted only when its embedded certificate was signed by one of those roots, names the
same key id, has not expired, is not revoked, and (checked by the caller once the body is
parsed) covers the channel. A root key never signs models: a root-signed manifest is refused.

**Revocations** come from ``trusted_keys/revocations.signed`` or from any bundle or inbox
that carries one (`Keyring.accept_revocations`); the newest verified list (highest
``version``) wins and is persisted in the model store, so a revocation once seen survives
restarts and cannot be undone by replaying an older list.

**Reloading.** `Keyring.reload` reads the directory (or a new one) again (on SIGHUP, through
`agent.models.slot.ModelSlot.reload_trusted_keys`): keys added or removed take effect for the next
verification, without a restart. A directory that has become unusable leaves the keys as
they were and raises `ConfigError`. `Keyring.shared` gives every part of the agent that
verifies (the model slot, the fetcher) one keyring per directory, so one reload reaches all.

``cryptography`` is imported only here, and only when keys are loaded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from pydantic import ValidationError

from agent.contract.announcement import MAX_SIGNED_DOCUMENT_BYTES
from agent.contract.errors import ConfigError, SignatureFormatError
from agent.contract.signatures import (
    KEY_ID_PATTERN,
    PUBLIC_KEY_SUFFIX,
    REVOCATIONS_FILE,
    ROOT_PURPOSES,
    ReleaseKeyCertificate,
    RevocationList,
    SignedDocument,
    signing_input,
)
from agent.errors import ModelRejectedError
from agent.models.store import write_file_atomically
from agent.ownfiles import read_own

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = structlog.get_logger("robotpm.model")

_CONFIG_KEY = "agent.model.trusted_keys"
_shared: dict[tuple[Path, Path | None], Keyring] = {}
_shared_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Signer:
    """Who signed a document that verified: a release key and its certificate."""

    key_id: str
    certificate: ReleaseKeyCertificate

    def check_channel(self, channel: str, source: str) -> None:
        """Raise `ModelRejectedError` unless the certificate covers `channel`."""
        if not self.certificate.allows(channel):
            raise ModelRejectedError(
                f"{source}: release key {self.key_id!r} may sign for channels "
                f"{list(self.certificate.channels)}, not {channel!r}"
            )


class Keyring:
    """Root public keys by id and the newest revocation list; see the module docstring."""

    __slots__ = ("_directory", "_lock", "_revocations", "_roots", "_state_file")

    def __init__(
        self,
        roots: Mapping[str, Ed25519PublicKey],
        revocations: RevocationList | None = None,
        *,
        directory: Path | None = None,
        state_file: Path | None = None,
    ) -> None:
        self._roots = dict(roots)
        self._revocations = revocations
        self._directory = directory
        self._state_file = state_file
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        version = self._revocations.version if self._revocations else 0
        return f"Keyring(roots={sorted(self._roots)}, revocations=v{version})"

    @property
    def root_ids(self) -> tuple[str, ...]:
        """The trusted root key ids, sorted."""
        return tuple(sorted(self._roots))

    @property
    def revocations(self) -> RevocationList | None:
        """The newest verified revocation list, if any."""
        return self._revocations

    @classmethod
    def load(cls, directory: Path, state_file: Path | None = None) -> Keyring:
        """Read the roots in `directory` and the newest revocation list there or in `state_file`.

        `ConfigError` if the directory is missing, holds no root key, or holds a file that
        is not an Ed25519 public key; an unverifiable ``revocations.signed`` there is one too.
        """
        ring = cls(_load_roots(directory), directory=directory, state_file=state_file)
        own = directory / REVOCATIONS_FILE
        if own.exists():
            try:
                ring.accept_revocations(_read_capped(own), source=str(own), persist=False)
            except ModelRejectedError as exc:
                raise ConfigError(str(own), _CONFIG_KEY, str(exc)) from None
        if state_file is not None and os.path.lexists(state_file):
            try:
                data = read_own(state_file, MAX_SIGNED_DOCUMENT_BYTES + 1)  # a FIFO there: refused, at once
                ring.accept_revocations(data, source=str(state_file), persist=False)
            except (ModelRejectedError, OSError) as exc:  # a list by a root no longer trusted: forget it
                log.warning("revocations_state_ignored", source=str(state_file), reason=str(exc))
        return ring

    @classmethod
    def shared(cls, directory: Path, state_file: Path | None = None) -> Keyring:
        """The process's keyring for `directory`, read afresh now (`load`); the same object each call."""
        fresh = cls.load(directory, state_file)
        key = (directory.resolve(), None if state_file is None else state_file.resolve())
        with _shared_lock:
            ring = _shared.setdefault(key, fresh)
        if ring is not fresh:
            ring._take(fresh)
        return ring

    def reload(self, directory: Path | None = None) -> None:
        """Read the directory (or a new `directory`) again and take its roots and revocations.

        The old state stays, and `ConfigError` is raised, when it is unusable.
        """
        directory = directory or self._directory
        if directory is None:
            return
        previous = self.root_ids
        self._take(Keyring.load(directory, self._state_file))
        self._directory = directory
        log.info(
            "trusted_keys_reloaded",
            directory=str(directory),
            roots=list(self.root_ids),
            previous=list(previous),
            revocations=self._revocations.version if self._revocations else 0,
        )

    def _take(self, fresh: Keyring) -> None:
        """Adopt the roots of a fresh load, and its revocations if they are not older than ours."""
        with self._lock:
            self._roots = fresh._roots
            if fresh._revocations is not None and (
                self._revocations is None or fresh._revocations.version >= self._revocations.version
            ):
                self._revocations = fresh._revocations

    def verify(
        self,
        document: SignedDocument,
        purpose: str,
        *,
        source: str,
        body: bytes | None = None,
        now: datetime | None = None,
    ) -> Signer:
        """Check `document` was signed for `purpose` by a certified, valid release key; return the signer.

        `body` is the signed content of a detached document (``manifest.json`` for
        ``manifest.sig``). Raises `ModelRejectedError` naming the reason.
        """
        if document.purpose != purpose:
            raise ModelRejectedError(f"{source}: a {document.purpose!r} signature, not a {purpose!r} one")
        if purpose in ROOT_PURPOSES:
            raise ModelRejectedError(f"{source}: {purpose!r} documents are checked by accept_revocations")
        now = now or datetime.now(timezone.utc)
        if document.certificate is None:
            raise ModelRejectedError(
                f"{source}: signed by key {document.key_id!r} without a certificate from a root key "
                f"(a root key never signs models; trusted roots: {', '.join(self.root_ids)})"
            )
        certificate = self._certificate(document.certificate, source)
        if certificate.key_id != document.key_id:
            raise ModelRejectedError(
                f"{source}: signed by key {document.key_id!r} with the certificate of {certificate.key_id!r}"
            )
        revoked = self._revocations
        if revoked is not None and certificate.key_id in revoked.revoked_keys:
            raise ModelRejectedError(
                f"{source}: release key {certificate.key_id!r} is revoked "
                f"(revocation list v{revoked.version})"
            )
        if certificate.expired(now):
            raise ModelRejectedError(
                f"{source}: the certificate of release key {certificate.key_id!r} expired at "
                f"{certificate.expires.isoformat()}"
            )
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        key = Ed25519PublicKey.from_public_bytes(certificate.raw_public_key)
        signed = document.body if body is None else body
        if not _verifies(key, document.signature, signing_input(purpose, signed)):
            raise ModelRejectedError(
                f"{source}: bad signature: the {purpose} was changed after signing, "
                f"or key {document.key_id!r} did not sign it"
            )
        return Signer(certificate.key_id, certificate)

    def accept_revocations(self, data: bytes, *, source: str, persist: bool = True) -> bool:
        """Verify a revocation list and keep it if it is newer than the one held; True if taken.

        Raises `ModelRejectedError` when it is malformed or not signed by a trusted root.
        A taken list is written to the state file (atomically) unless `persist` is False.
        """
        try:
            document = SignedDocument.parse(data, max_bytes=MAX_SIGNED_DOCUMENT_BYTES)
        except SignatureFormatError as exc:
            raise ModelRejectedError(f"{source}: {exc}") from None
        if document.purpose != "revocations" or document.certificate is not None:
            raise ModelRejectedError(f"{source}: not a root-signed revocation list")
        self._check_root_signature(document, source)
        try:
            revocations = RevocationList.model_validate_json(document.body)
        except ValidationError as exc:
            raise ModelRejectedError(f"{source}: revocation list: {exc.errors()[0]['msg']}") from None
        with self._lock:
            held = self._revocations
            if held is not None and revocations.version <= held.version:
                return False
            self._revocations = revocations
        if persist and self._state_file is not None:
            write_file_atomically(self._state_file, data)
        log.info(
            "revocations_accepted",
            version=revocations.version,
            revoked=list(revocations.revoked_keys),
            source=source,
        )
        return True

    def _certificate(self, document: SignedDocument, source: str) -> ReleaseKeyCertificate:
        self._check_root_signature(document, source, what=f"the certificate of {document.key_id!r}")
        try:
            return ReleaseKeyCertificate.model_validate_json(document.body)
        except ValidationError as exc:
            raise ModelRejectedError(f"{source}: certificate: {exc.errors()[0]['msg']}") from None

    def _check_root_signature(self, document: SignedDocument, source: str, what: str = "") -> None:
        what = what or f"the {document.purpose}"
        root = self._roots.get(document.key_id)
        if root is None:
            raise ModelRejectedError(
                f"{source}: {what} is signed by {document.key_id!r}, not a trusted root key "
                f"(trusted: {', '.join(self.root_ids)})"
            )
        if not _verifies(root, document.signature, signing_input(document.purpose, document.body)):
            raise ModelRejectedError(f"{source}: {what} does not verify with root key {document.key_id!r}")


def _verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _read_capped(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(MAX_SIGNED_DOCUMENT_BYTES + 1)


def _load_roots(directory: Path) -> dict[str, Ed25519PublicKey]:
    import re

    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(PUBLIC_KEY_SUFFIX))
    except FileNotFoundError:
        raise ConfigError(str(directory), _CONFIG_KEY, "no such directory") from None
    except OSError as exc:
        raise ConfigError(str(directory), _CONFIG_KEY, f"cannot list: {exc.strerror}") from None
    pattern = re.compile(KEY_ID_PATTERN)
    roots: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        key_id = path.name[: -len(PUBLIC_KEY_SUFFIX)]
        if not pattern.match(key_id):
            raise ConfigError(str(path), _CONFIG_KEY, f"key id {key_id!r} does not match {KEY_ID_PATTERN}")
        try:
            key = load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise ConfigError(str(path), _CONFIG_KEY, f"cannot read: {exc.strerror}") from None
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(str(path), _CONFIG_KEY, f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(str(path), _CONFIG_KEY, f"not an Ed25519 key ({type(key).__name__})")
        roots[key_id] = key
    if not roots:
        raise ConfigError(str(directory), _CONFIG_KEY, f"no root key <key_id>{PUBLIC_KEY_SUFFIX} in it")
    return roots
