"""The model slot: which model the agent scores with, and picking up newer versions.

The store is a directory with one sub-directory per model version, each holding
``model.onnx`` and ``manifest.json`` (write it elsewhere and rename it in, so the
agent never sees half a model). At start the newest usable version is loaded,
else the bundled model. While running, `ModelSlot.poll` looks for a version
newer than the current one; a candidate is loaded and passes its golden test
*before* it is offered, so the daemon swaps at a window boundary and the old
model keeps serving if anything is wrong. A refused candidate is remembered and
not retried until its files change. Versions never go down.

Each refusal of a store model is also kept as a `Refusal` until the daemon takes it
(`take_refusals`) to publish a "rejected" model status. A candidate that fails its
probation (`agent.models.probation`) is refused through `reject`, with the same memory.

Every model read from the store goes through an `agent.models.verify.ModelVerifier`: with
``trusted_keys`` configured it must carry a valid signature from a trusted key, and in
any case it must not have expired, all checked before its ONNX bytes are read. The
bundled model is exempt (see `agent.models.verify` for why).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.config import ModelConfig
from agent.contract.errors import ContractError
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, ModelManifest
from agent.errors import ModelError, ModelLoadError
from agent.models.scorer import OnnxScorer
from agent.models.verify import ModelVerifier
from agent.seams import Scorer

log = structlog.get_logger("robotpm.model")


@dataclass(frozen=True, slots=True)
class _Fingerprint:
    path: Path
    stamps: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A store model the slot refused, and why.

    ``manifest`` is what its manifest claims, read without trusting it (None when it cannot
    be read at all): it names the model in the status message, nothing more.
    """

    source: Path
    reason: str
    manifest: ModelManifest | None


class ModelSlot:
    """Holds the current scorer and finds newer verified versions in the store.

    The verifier defaults to the one `config` asks for; building it reads the trusted
    keys, so a bad ``trusted_keys`` directory raises `ConfigError` here, at start.
    """

    def __init__(self, config: ModelConfig, verifier: ModelVerifier | None = None) -> None:
        self._config = config
        self._verifier = verifier if verifier is not None else ModelVerifier.from_config(config)
        if self._verifier.keys is not None:
            log.info("model_signatures_required", trusted_keys=list(self._verifier.keys.key_ids))
        self._current: Scorer | None = None
        self._offered_version = 0
        self._refused: set[_Fingerprint] = set()
        self._versions: dict[_Fingerprint, int] = {}  # manifests already read, by file stamps
        self._offered: dict[int, tuple[OnnxScorer, Path, _Fingerprint]] = {}  # by id(scorer)
        self._lock = threading.Lock()  # short sections only: the loop must never wait for a load
        self._refusals: list[Refusal] = []

    @property
    def current(self) -> Scorer:
        """The scorer in use; `load_initial` must have been called."""
        if self._current is None:
            raise ModelLoadError("no model loaded yet")
        return self._current

    def load_initial(
        self,
        max_version: int | None = None,
        unfit: Callable[[ModelManifest], str | None] | None = None,
    ) -> OnnxScorer:
        """Load the newest usable model in the store, else the bundled one.

        With `max_version`, newer store versions are left for `poll` to offer (the daemon
        passes the version it ran before a restart, so a model that had not finished its
        probation goes through it again instead of starting as the current model).
        `unfit` says why a verified model cannot serve here (e.g. channels the streams do
        not map); such a store model is refused and the next one tried, so a bad newest
        model cannot make the agent crash-loop. The bundled model being unfit is an error.
        """
        found = [c for c in self._candidates() if max_version is None or c[1] <= max_version]
        for directory, _ in sorted(found, key=lambda c: c[1], reverse=True):
            scorer = self._try_load(directory)
            if scorer is None:
                continue
            reason = unfit(scorer.manifest) if unfit is not None else None
            if reason is not None:
                self._refuse(directory, _fingerprint(directory), reason)
                continue
            self._current = scorer
            return scorer
        bundled = self._config.bundled
        if bundled is not None:
            if not (bundled / MANIFEST_FILE).exists() or not (bundled / MODEL_FILE).exists():
                raise ModelLoadError(
                    f"no usable model: the store {self._config.directory} has none and the bundled "
                    f"model directory {bundled} lacks {MODEL_FILE} or {MANIFEST_FILE}"
                )
            scorer = OnnxScorer.load(bundled)  # exempt from signature and expiry: see agent.models.verify
            scorer.check_golden()
            reason = unfit(scorer.manifest) if unfit is not None else None
            if reason is not None:
                raise ModelLoadError(f"the bundled model {scorer.manifest.label} cannot serve here: {reason}")
            self._current = scorer
            log.info("model_loaded", model=scorer.manifest.label, source=str(bundled))
            return scorer
        raise ModelLoadError(f"no usable model in {self._config.directory} and no bundled model configured")

    def poll(self) -> OnnxScorer | None:
        """A verified scorer for a version newer than the current one, or None."""
        floor = max(self._current.manifest.version if self._current else 0, self._offered_version)
        newer = [(d, v) for d, v in self._candidates() if v > floor]
        for directory, _ in sorted(newer, key=lambda c: c[1], reverse=True):
            fingerprint = _fingerprint(directory)
            scorer = self._try_load(directory)
            if scorer is not None:
                with self._lock:
                    self._offered_version = scorer.manifest.version
                    self._offered = {id(scorer): (scorer, directory, fingerprint)}  # the newest only
                return scorer
        return None

    def reject(self, scorer: Scorer, reason: str) -> None:
        """Refuse a candidate `poll` offered (it failed its probation) until its files change.

        Not reported by `take_refusals`: the daemon publishes "rolled_back" for it.
        """
        with self._lock:
            offered = self._offered.pop(id(scorer), None)
            if offered is None:
                log.warning("model_rejected_unknown", model=scorer.manifest.label, reason=reason)
                return
            _, directory, fingerprint = offered
            self._refused.add(fingerprint)  # before lowering the floor: a concurrent poll skips it
            # Lower the floor again, so the same version with changed files is offered once more.
            self._offered_version = self._current.manifest.version if self._current else 0
        log.warning("model_refused", source=str(directory), reason=reason)

    def take_refusals(self) -> list[Refusal]:
        """The store models refused since the last call (thread-safe)."""
        with self._lock:
            refusals, self._refusals = self._refusals, []
        return refusals

    def accept(self, scorer: Scorer, *, trim: bool = True) -> None:
        """Make `scorer` the current model (the daemon calls this at a window boundary).

        With ``trim`` the freed heap of the old session is handed back at once; the
        daemon passes False and lets its model watcher thread do that off the loop.
        """
        previous = self._current.manifest.label if self._current else None
        with self._lock:
            self._current = scorer
            self._offered.pop(id(scorer), None)
        if trim:
            release_freed_memory()
        log.info("model_swapped", model=scorer.manifest.label, previous=previous)

    def _candidates(self) -> list[tuple[Path, int]]:
        store = self._config.directory
        if not store.is_dir():
            return []
        found: list[tuple[Path, int]] = []
        for child in store.iterdir():
            manifest_path = child / MANIFEST_FILE
            if not manifest_path.is_file() or child.name.startswith("."):
                continue
            fingerprint = _fingerprint(child)
            if fingerprint in self._refused:
                continue
            version = self._versions.get(fingerprint)
            if version is None:
                try:
                    version = self._verifier.read_manifest(child).version
                except (ContractError, ModelError) as exc:
                    self._refuse(child, fingerprint, str(exc))
                    continue
                self._versions[fingerprint] = version
            found.append((child, version))
        return found

    def _try_load(self, directory: Path) -> OnnxScorer | None:
        fingerprint = _fingerprint(directory)
        try:
            scorer = OnnxScorer.load(directory, verifier=self._verifier)
            scorer.check_golden()
        except ModelError as exc:
            self._refuse(directory, fingerprint, str(exc))
            return None
        log.info("model_verified", model=scorer.manifest.label, source=str(directory))
        return scorer

    def _refuse(self, directory: Path, fingerprint: _Fingerprint, reason: str) -> None:
        self._refused.add(fingerprint)
        try:
            claimed: ModelManifest | None = ModelManifest.read(directory)
        except Exception:  # unreadable is a reason to refuse, not to fail
            claimed = None
        with self._lock:
            self._refusals.append(Refusal(directory, reason, claimed))
        log.warning("model_refused", source=str(directory), reason=reason)


def release_freed_memory() -> None:
    """Give freed heap back to the OS after an old onnxruntime session is dropped.

    Without it, RSS after repeated session swaps plateaus ~20 MiB above the first
    session (DESIGN.md, known pitfalls). A no-op where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _fingerprint(directory: Path) -> _Fingerprint:
    stamps: list[tuple[int, int]] = []
    for name in (MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE):
        try:
            st = (directory / name).stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((0, -1))
    return _Fingerprint(directory, tuple(stamps))
