"""Installing a model bundle into the store: nothing enters it before it has been verified.

A bundle (`agent.contract.announcement`) is a plain tar of ``model.onnx``, ``manifest.json``,
``manifest.sig`` and optionally ``revocations.signed``. `BundleInstaller.install`, for a
download (`agent.models.fetch`) and a technician's inbox (`agent.models.inbox`) alike:

1. unpacks it with `safe_extract` into a staging directory inside the store (a dot-directory,
   which is never a model) — regular files with the expected names only, no paths, a size cap;
2. takes in a revocation list it carries (`agent.models.keys.Keyring.accept_revocations`), so
   a revocation spreads with the next model;
3. verifies the unpacked model as the slot would (`agent.models.verify.ModelVerifier.admit`:
   signature, manifest, sha256 and length, static checks), checks it is the model that was
   announced and newer than the store's version floor;
4. renames it into the store as ``v<version>`` (fsynced), and only then raises the floor.

Any refusal deletes the staging directory: a refused bundle leaves nothing behind. A crash at
any step leaves either no new version (the staging directory is removed at the next start)
or the complete one; the floor never names a version that is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

import structlog

from agent.contract.announcement import BUNDLE_MEMBERS, REQUIRED_MEMBERS, ModelAnnouncement
from agent.contract.errors import ContractError
from agent.contract.manifest import ModelManifest
from agent.contract.signatures import REVOCATIONS_FILE
from agent.errors import FetchRefusedError, ModelError, ModelStoreError
from agent.models.store import ModelStore
from agent.models.verify import ModelVerifier

log = structlog.get_logger("robotpm.model")

_CHUNK = 64 * 1024
_UNPACKED = "model"

INSTALL_STEPS: Final = ("unpacked", "verified", "installed", "committed")
"""The points `BundleInstaller` reports to its ``on_step`` hook (tests kill the process there)."""


class BundleInstaller:
    """Verifies bundles and installs them into one store; see the module docstring.

    ``channel``, when set, is the only channel a bundle's manifest may name.
    """

    def __init__(
        self,
        store: ModelStore,
        verifier: ModelVerifier,
        *,
        max_bytes: int,
        channel: str | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._verifier = verifier
        self._max_bytes = max_bytes
        self._channel = channel
        self._on_step = on_step or (lambda step: None)

    @property
    def store(self) -> ModelStore:
        """The store bundles go into."""
        return self._store

    def install(self, bundle: Path, *, expect: ModelAnnouncement | None = None) -> tuple[Path, ModelManifest]:
        """Verify `bundle` and install it; returns the new version directory and its manifest.

        Raises `FetchRefusedError` naming the reason (nothing is left in the store then).
        """
        with self._store.staging() as work:
            unpacked = work / _UNPACKED
            unpacked.mkdir()
            names = safe_extract(bundle, unpacked, self._max_bytes)
            self._on_step("unpacked")
            if REVOCATIONS_FILE in names:
                self._take_revocations(unpacked / REVOCATIONS_FILE)
            try:
                manifest = self._verifier.admit(unpacked).manifest
            except (ContractError, ModelError) as exc:
                raise FetchRefusedError(_without(str(exc), str(unpacked))) from None
            self._check(manifest, expect)
            self._on_step("verified")
            target = self._store.install(unpacked, manifest.version)
            self._on_step("installed")
            try:
                self._store.raise_floor(manifest.version)
            except OSError as exc:  # installed all the same: the slot raises the floor when it verifies it
                log.warning("model_floor_not_saved", version=manifest.version, error=str(exc))
            self._on_step("committed")
        return target, manifest

    def _take_revocations(self, path: Path) -> None:
        keys = self._verifier.keys
        data = path.read_bytes()
        path.unlink()
        if keys is None:
            return
        try:
            keys.accept_revocations(data, source=f"bundle {REVOCATIONS_FILE}")
        except ModelError as exc:
            raise FetchRefusedError(f"bundle {REVOCATIONS_FILE}: {exc}") from None

    def _check(self, manifest: ModelManifest, expect: ModelAnnouncement | None) -> None:
        if expect is not None and (manifest.model_id, manifest.version, manifest.channel) != (
            expect.model_id,
            expect.version,
            expect.channel,
        ):
            raise FetchRefusedError(
                f"bundle holds {manifest.label} of channel {manifest.channel!r}, the announcement names "
                f"{expect.label} of channel {expect.channel!r}"
            )
        if self._channel is not None and manifest.channel != self._channel:
            raise FetchRefusedError(
                f"{manifest.label} is for channel {manifest.channel!r}, not {self._channel!r}"
            )
        floor = self._store.floor
        if manifest.version <= floor:
            raise FetchRefusedError(f"{manifest.label} is not newer than the store's version floor {floor}")
        if self._store.version_dir(manifest.version).exists():
            raise FetchRefusedError(
                f"{self._store.version_dir(manifest.version).name} is already in the store"
            )


def safe_extract(bundle: Path, destination: Path, max_bytes: int) -> list[str]:
    """Unpack a model bundle into the empty directory `destination`; returns the names written.

    Every member is checked before anything is written: a regular file (no links,
    directories or devices), named exactly one of `BUNDLE_MEMBERS` (so no absolute path
    and no ``..``), each at most once, all together at most `max_bytes`;
    ``model.onnx`` and ``manifest.json`` must be there. Raises `FetchRefusedError`.
    """
    import tarfile  # only an agent that installs bundles pays for it (~0.4 MiB)

    try:
        if bundle.stat().st_size > max_bytes + 64 * 1024:
            raise FetchRefusedError(f"bundle is larger than {max_bytes} bytes")
        with tarfile.open(bundle, mode="r:") as tar:
            members = tar.getmembers()
            seen: set[str] = set()
            total = 0
            for member in members:
                name = member.name
                if "/" in name or "\\" in name or name in ("", ".", ".."):
                    raise FetchRefusedError(f"bundle member {name!r} is a path, not a plain file name")
                if name not in BUNDLE_MEMBERS:
                    raise FetchRefusedError(f"bundle member {name!r} is not one of {sorted(BUNDLE_MEMBERS)}")
                if not member.isreg():
                    raise FetchRefusedError(f"bundle member {name!r} is not a regular file")
                if name in seen:
                    raise FetchRefusedError(f"bundle member {name!r} appears twice")
                seen.add(name)
                total += member.size
                if total > max_bytes:
                    raise FetchRefusedError(f"bundle unpacks to more than {max_bytes} bytes")
            missing = REQUIRED_MEMBERS - seen
            if missing:
                raise FetchRefusedError(f"bundle lacks {sorted(missing)}")
            for member in members:
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular files always have data
                    raise FetchRefusedError(f"bundle member {member.name!r} has no data")
                _copy_new(source, destination / member.name, member.size)
    except (tarfile.TarError, EOFError) as exc:
        raise FetchRefusedError(f"bundle is not a valid tar file: {exc}") from None
    except OSError as exc:
        raise FetchRefusedError(f"bundle cannot be read: {exc}") from None
    return sorted(seen)


def _copy_new(source: IO[bytes], path: Path, size: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NONBLOCK, 0o644)
        with os.fdopen(fd, "wb") as out:
            remaining = size
            while remaining > 0:
                chunk = source.read(min(_CHUNK, remaining))
                if not chunk:
                    raise FetchRefusedError(f"bundle member {path.name!r} is truncated")
                out.write(chunk)
                remaining -= len(chunk)
    except OSError as exc:  # the store's disk, not the bundle: worth another try
        raise ModelStoreError(f"cannot unpack into the store: {exc}") from None


def _without(text: str, prefix: str) -> str:
    """A reason without the staging directory's path (it is gone by the time anyone reads it)."""
    return text.replace(f"{prefix}/", "").replace(f"{prefix}: ", "").replace(prefix, "bundle")
