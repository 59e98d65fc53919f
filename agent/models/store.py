"""The model store on disk: the one module that knows its layout, and writes to it durably.

    <store>/                      agent.model.directory
      v<version>/                 one directory per installed version (a technician may drop
        model.onnx                  others under any name not starting with "."), each renamed
        manifest.json               in whole, so a reader never sees half a model
        manifest.sig
      .staging-*/                 installs in progress; left over only by a crash, removed at start
      .trash-*/                   a version being deleted (renamed out first, then removed)
      .partial/<sha256>           a download in progress, resumed with HTTP Range
      .floor.json                 the highest version a verified model has carried
      .refused.json               models refused after their signature held, by content: why
      .revocations.signed         the newest root-signed revocation list the agent has verified

Dot-entries are never models. Every file the store writes is written to a temporary name,
fsynced, renamed and its directory fsynced (`write_file_atomically`), so a crash leaves the
old or the new content, never a torn one.

**The version floor** (`ModelStore.floor`) is the highest version the trainer has been proven
to release: it is raised by an install once its version is in the store, and by every store
model whose signature holds (a release key certified by a trusted root, unexpired, unrevoked,
scoped to the manifest's channel), whether or not the manifest itself has expired or its bytes
then pass. Expiry bounds what may serve, the floor orders what may come next, as in TUF (see
docs/model-supply-chain.md). An announcement, a refused download or a file dropped in whose
signature fails cannot lift it, so versions at or below it are not fetched again, and an
attacker cannot freeze a robot by announcing an absurd version.

**Quota and pruning.** The store shares its disk with the agent's state: `ensure_room` refuses
an install that would take it over ``agent.model.store_max_bytes``, and `prune_plan` says what
to delete once a model is live: everything refused, and every version older than the running
one except the two newest of those (the way back).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from agent import atomicfile
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
from agent.errors import ModelStoreError
from agent.ownfiles import read_own

log = structlog.get_logger("robotpm.model")

MODEL_FILES: Final = (MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE)
"""The files of one version directory, in the order their stamps are taken."""

STAGING_PREFIX: Final = ".staging-"
TRASH_PREFIX: Final = ".trash-"
PARTIAL_DIR: Final = ".partial"
FLOOR_FILE: Final = ".floor.json"
REFUSED_FILE: Final = ".refused.json"
REVOCATIONS_STATE_FILE: Final = ".revocations.signed"
KEEP_OLDER: Final = 2
"""Versions older than the running one that pruning keeps."""
MAX_REMEMBERED_REFUSALS: Final = 256

_floor_lock = threading.Lock()  # floor and refusal files are read-modified-written from two threads


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A version directory's identity and its files' (inode, size, mtime) stamps: changes when a file does."""

    path: Path
    stamps: tuple[tuple[int, int, int], ...]

    @property
    def key(self) -> str:
        """A string for the on-disk memory of refusals."""
        return f"{self.path.name}:" + ",".join("-".join(map(str, s)) for s in self.stamps)


class ModelStore:
    """The store directory; see the module docstring. Cheap to make: nothing is read until asked."""

    __slots__ = ("_directory", "_max_bytes")

    def __init__(self, directory: Path, max_bytes: int | None = None) -> None:
        self._directory = directory
        self._max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"ModelStore({self._directory})"

    @property
    def directory(self) -> Path:
        """The store directory."""
        return self._directory

    @property
    def revocations_file(self) -> Path:
        """Where the newest verified revocation list is kept."""
        return self._directory / REVOCATIONS_STATE_FILE

    # -- reading ---------------------------------------------------------------------------------

    def entries(self) -> list[Path]:
        """The version directories (with a manifest), by name; dot-entries are never models."""
        try:
            children = sorted(self._directory.iterdir())
        except OSError:
            return []
        return [c for c in children if not c.name.startswith(".") and (c / MANIFEST_FILE).is_file()]

    def version_dir(self, version: int) -> Path:
        """Where an installed `version` lives."""
        return self._directory / f"v{version}"

    @staticmethod
    def fingerprint(directory: Path) -> Fingerprint:
        """The current stamps of a version directory's files."""
        stamps: list[tuple[int, int, int]] = []
        for name in MODEL_FILES:
            try:
                st = (directory / name).stat()
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append((0, -1, 0))
        return Fingerprint(directory, tuple(stamps))

    def signature(self) -> tuple[tuple[str, int, int, int], ...]:
        """What changes when a version is added to, replaced in or removed from the store (for watching)."""
        return stamps_of(
            self._directory,
            lambda e: () if e.name.startswith(".") else [f"{e.name}/{n}" for n in MODEL_FILES],
        )

    def usage(self) -> int:
        """Bytes the store holds, dot-entries included."""
        total = 0
        for root, _, files in os.walk(self._directory):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    # -- the version floor and the memory of refusals ------------------------------------------------

    @property
    def floor(self) -> int:
        """The highest version a verified model has carried (0 when none has)."""
        value = _read_json(self._directory / FLOOR_FILE).get("version")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    def raise_floor(self, version: int) -> bool:
        """Raise the floor to `version` if it is higher (written atomically); True if it moved.

        Call it only for a version whose manifest verified.
        """
        with _floor_lock:
            if version <= self.floor:
                return False
            write_file_atomically(self._directory / FLOOR_FILE, json.dumps({"version": version}).encode())
        log.info("model_floor_raised", version=version)
        return True

    def remembered_refusal(self, fingerprint: Fingerprint) -> str | None:
        """Why this exact content was refused before (after its signature held), or None."""
        reason = _read_json(self._directory / REFUSED_FILE).get(fingerprint.key)
        return reason if isinstance(reason, str) else None

    def remember_refusal(self, fingerprint: Fingerprint, reason: str) -> None:
        """Keep on disk why this content was refused, so no restart tries it again."""
        with _floor_lock:
            known = {
                k: v for k, v in _read_json(self._directory / REFUSED_FILE).items() if isinstance(v, str)
            }
            known.pop(fingerprint.key, None)
            known[fingerprint.key] = reason
            kept = dict(list(known.items())[-MAX_REMEMBERED_REFUSALS:])
            try:
                write_file_atomically(self._directory / REFUSED_FILE, json.dumps(kept, indent=1).encode())
            except OSError as exc:  # a full disk must not turn a refusal into a crash
                log.warning("model_refusal_not_saved", source=str(fingerprint.path), error=str(exc))

    # -- writing ---------------------------------------------------------------------------------

    def recover(self) -> None:
        """Create the store if needed and remove what a crash left (staging, trash, temporary files)."""
        self._directory.mkdir(parents=True, exist_ok=True)
        for child in self._directory.iterdir():
            if child.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(child, ignore_errors=True)
            elif child.name.startswith(".") and child.name.endswith(".tmp"):  # a state file half written
                child.unlink(missing_ok=True)
            else:
                continue
            log.info("model_store_leftover_removed", path=str(child))

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh work directory in the store (the final rename stays on one filesystem); removed after."""
        self._directory.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self._directory))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def install(self, staged: Path, version: int) -> Path:
        """Rename a complete, verified version directory into the store as ``v<version>``, durably."""
        target = self.version_dir(version)
        for name in os.listdir(staged):
            fsync_directory(staged / name)
        fsync_directory(staged)
        try:
            os.rename(staged, target)
        except OSError as exc:
            raise ModelStoreError(
                f"cannot move {staged.name} into the store as {target.name}: {exc}"
            ) from None
        fsync_directory(self._directory)
        return target

    def remove(self, directory: Path) -> None:
        """Delete a version directory: renamed out of sight first, so no reader sees it half gone."""
        trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=self._directory))
        try:
            os.rename(directory, trash / directory.name)
        except OSError as exc:
            shutil.rmtree(trash, ignore_errors=True)
            log.warning("model_store_remove_failed", path=str(directory), error=str(exc))
            return
        fsync_directory(self._directory)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("model_store_pruned", path=str(directory))

    def ensure_room(self, needed: int) -> None:
        """Raise `ModelStoreError` if `needed` more bytes would take the store over its quota."""
        if self._max_bytes is None:
            return
        used = self.usage()
        if used + needed > self._max_bytes:
            raise ModelStoreError(
                f"the model store holds {used} bytes; {needed} more would pass store_max_bytes "
                f"{self._max_bytes} (it is pruned once a newer model is live)"
            )

    def partial(self, name: str) -> Path:
        """The file a download named `name` (its sha256) accumulates in."""
        directory = self._directory / PARTIAL_DIR
        directory.mkdir(parents=True, exist_ok=True)
        return directory / name

    def discard_partials(self, keep: str | None = None) -> None:
        """Delete partial downloads other than `keep`."""
        with contextlib.suppress(OSError):
            for child in (self._directory / PARTIAL_DIR).iterdir():
                if child.name != keep:
                    child.unlink(missing_ok=True)


def prune_plan(
    running: tuple[Path, int] | None,
    verified: Mapping[Path, int],
    refused: Collection[Path],
    keep_older: int = KEEP_OLDER,
) -> list[Path]:
    """What to delete once a model is live.

    Every refused entry, and the verified versions older than the running one beyond the
    `keep_older` newest of them. Newer verified entries (candidates) and entries not looked
    at yet are kept; the running one always is.
    """
    doomed = {p for p in refused if running is None or p != running[0]}
    if running is not None:
        path, version = running
        older = sorted(
            ((v, p) for p, v in verified.items() if p != path and p not in doomed and v <= version),
            key=lambda item: (item[0], item[1].name),
            reverse=True,
        )
        doomed.update(p for _, p in older[keep_older:])
    return sorted(doomed)


def write_file_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` through a temporary file: fsync, rename, fsync of the directory.

    `agent.atomicfile.write_atomically`, with the directory made first and its fsync best effort.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    atomicfile.write_atomically(path, data, mode, sync_directory=False)
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    """Make a file, or the renames and creations in a directory, durable (best effort where refused)."""
    with contextlib.suppress(OSError):
        atomicfile.fsync_directory(path)


def stamps_of(
    directory: Path, paths: Callable[[os.DirEntry[str]], Iterable[str]]
) -> tuple[tuple[str, int, int, int], ...]:
    """(path, inode, size, mtime) of the files `paths` names for each entry of `directory`, by name.

    Paths are relative to `directory`; a file that cannot be stat'ed is left out.
    """
    entries: list[tuple[str, int, int, int]] = []
    try:
        children = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return ()
    for child in children:
        for relative in paths(child):
            try:
                st = os.stat(os.path.join(directory, relative))
            except OSError:
                continue
            entries.append((relative, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(entries)


def _read_json(path: Path) -> dict[str, object]:
    """A small JSON object the store wrote, or {} when it is missing or damaged (never trusted further)."""
    try:
        data = json.loads(read_own(path, 1 << 20))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
