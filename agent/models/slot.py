"""The model slot: which model the agent scores with, and picking up newer versions from the store.

The store (`agent.models.store`) holds one directory per version. At start the newest
usable version is loaded, else the bundled model. While running, `ModelSlot.poll` looks
for a version newer than the current one; a candidate is fully checked *before* it is
offered, so the daemon swaps at a window boundary and the old model keeps serving if
anything is wrong. Versions never go down.

A store model is checked in this order (`agent.models.verify` for the first two):

1. its manifest's signature, then the manifest (the version floor is raised once the signature
   holds, even if the manifest has expired: `agent.models.store`);
2. its bytes against the manifest, and the static checks;
3. when ``agent.model.isolate`` is on, a load and golden test in a limited child process
   (`agent.models.probe`), so a model that needs gigabytes or loops forever is refused
   without the agent paying for it;
4. the session in the agent, and the golden test again.

A model refused at step 2 or later is remembered on disk by content (the store's memory of
refusals), so no restart tries it again; one refused at step 1 is remembered in memory only,
since reloading the keys (`reload_keys`) can change that verdict. Either is offered again
once its files change. Each refusal is also kept as a `Refusal` until the daemon takes it
(`take_refusals`) to publish a "rejected" model status; a refusal at step 1 carries no
manifest, since an unverified manifest is never parsed. A candidate that fails its probation
(`agent.models.probation`) is refused through `reject`.

`prune` deletes what the store no longer needs once a model is live (see
`agent.models.store.prune_plan`): models refused for their content, and versions older than
the two before the running one; the model watcher thread calls it.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from agent.config import ModelConfig
from agent.contract.errors import ConfigError, ContractError
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from agent.errors import ModelError, ModelLoadError, ModelRejectedError
from agent.models.probe import ProbeLimits, probe_model
from agent.models.scorer import OnnxScorer
from agent.models.store import Fingerprint, ModelStore, prune_plan
from agent.models.verify import ModelVerifier, check_expiry
from agent.seams import LoadGuard, Scorer

log = structlog.get_logger("robotpm.model")

Verdict = Literal["signature", "content", "unfit", "probation"]
"""Which check refused a store model: its signature (looked at again after `reload_keys`), its
content (remembered on disk, pruned), the streams (unfit here) or its probation (both kept)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A store model the slot refused, and why.

    ``manifest`` is its manifest when the signature held (None otherwise: an unverified
    manifest is never parsed); it names the model in the status message, nothing more.
    """

    source: Path
    reason: str
    manifest: ModelManifest | None


class ModelSlot:
    """Holds the current scorer and finds newer verified versions in the store.

    The verifier defaults to the one `config` asks for; building it reads the trusted
    keys, so a bad ``trusted_keys`` directory raises `ConfigError` here, at start.
    """

    def __init__(
        self, config: ModelConfig, verifier: ModelVerifier | None = None, *, guard: LoadGuard | None = None
    ) -> None:
        self._config = config
        self._guard = guard  # told of every store model load; may refuse one (agent.crashguard)
        self._store = ModelStore(config.directory, config.store_max_bytes)
        self._verifier = verifier if verifier is not None else ModelVerifier.from_config(config)
        if self._verifier.keys is not None:
            log.info("model_signatures_required", root_keys=list(self._verifier.keys.root_ids))
        self._limits = ProbeLimits.from_config(config) if config.isolate else None
        self._current: Scorer | None = None
        self._current_dir: Path | None = None  # None: the bundled model
        self._offered_version = 0
        self._refused: dict[Fingerprint, Verdict] = {}  # refused content → which check refused it
        self._versions: dict[Fingerprint, int] = {}  # verified manifests, by file stamps
        self._manifests: dict[Fingerprint, ModelManifest] = {}  # the same, for their expiry
        self._offered: dict[int, tuple[OnnxScorer, Path, Fingerprint]] = {}  # by id(scorer)
        self._lock = threading.Lock()  # short sections only: the loop must never wait for a load
        self._refusals: list[Refusal] = []
        self._rescan: threading.Event | None = None

    @property
    def config(self) -> ModelConfig:
        """The ``[agent.model]`` configuration."""
        return self._config

    @property
    def store(self) -> ModelStore:
        """The model store."""
        return self._store

    @property
    def verifier(self) -> ModelVerifier:
        """The verifier (share it with the fetcher, so one key reload reaches both)."""
        return self._verifier

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
        running: int | None = None,
    ) -> OnnxScorer:
        """Load the newest usable model in the store, else the bundled one.

        With `max_version`, newer store versions are left for `poll` to offer (the daemon
        passes the version it ran before a restart, so a model that had not finished its
        probation goes through it again instead of starting as the current model).
        `unfit` says why a verified model cannot serve here (e.g. channels the streams do
        not map); such a store model is refused and the next one tried, so a bad newest
        model cannot make the agent crash-loop. The bundled model being unfit is an error.

        An expired model is never passed over silently for an older one: with
        ``on_expiry = "keep_serving"`` the version that ran before (`running`; on a first
        start, the newest) loads although expired; otherwise it is refused and reported.
        """
        self._store.recover()
        policy = self._config.on_expiry
        found = [c for c in self._candidates() if max_version is None or c[1] <= max_version]
        for index, (directory, version, expired) in enumerate(
            sorted(found, key=lambda c: c[1], reverse=True)
        ):
            if expired is not None:
                keep = policy == "keep_serving" and (
                    version == running if running is not None else index == 0
                )
                if not keep:
                    fingerprint = self._store.fingerprint(directory)
                    self._refuse(
                        directory,
                        fingerprint,
                        f"{expired} (on_expiry = {policy})",
                        self._manifests.get(fingerprint),
                        kind="signature",
                    )
                    continue
                log.warning("model_expired_kept", source=str(directory), reason=expired)
            scorer = self._try_load(directory, allow_expired=expired is not None)
            if scorer is None:
                continue
            reason = unfit(scorer.manifest) if unfit is not None else None
            if reason is not None:
                self._refuse(
                    directory, self._store.fingerprint(directory), reason, scorer.manifest, kind="unfit"
                )
                continue
            self._current, self._current_dir = scorer, directory
            return scorer
        bundled = self._config.bundled
        if bundled is not None:
            if not (bundled / MANIFEST_FILE).exists() or not (bundled / MODEL_FILE).exists():
                raise ModelLoadError(
                    f"no usable model: the store {self._config.directory} has none and the bundled "
                    f"model directory {bundled} lacks {MODEL_FILE} or {MANIFEST_FILE}"
                )
            admitted = self._verifier.admit(bundled, trusted_source=True)  # see agent.models.verify
            scorer = OnnxScorer(admitted.model_bytes, admitted.manifest)
            scorer.check_golden()
            reason = unfit(scorer.manifest) if unfit is not None else None
            if reason is not None:
                raise ModelLoadError(f"the bundled model {scorer.manifest.label} cannot serve here: {reason}")
            self._current, self._current_dir = scorer, None
            log.info("model_loaded", model=scorer.manifest.label, source=str(bundled))
            return scorer
        raise ModelLoadError(f"no usable model in {self._config.directory} and no bundled model configured")

    def poll(self) -> OnnxScorer | None:
        """A verified scorer for a version newer than the current one, or None."""
        floor = max(self._current.manifest.version if self._current else 0, self._offered_version)
        newer = [(d, v, expired) for d, v, expired in self._candidates() if v > floor]
        for directory, _, expired in sorted(newer, key=lambda c: c[1], reverse=True):
            fingerprint = self._store.fingerprint(directory)
            if expired is not None:  # never offered; the running model is judged by on_expiry
                with self._lock:
                    manifest = self._manifests.get(fingerprint)
                self._refuse(directory, fingerprint, expired, manifest, kind="signature")
                continue
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
            self._refused[fingerprint] = "probation"  # before lowering the floor: a concurrent poll skips it
            # Lower the floor again, so the same version with changed files is offered once more.
            self._offered_version = self._current.manifest.version if self._current else 0
        log.warning("model_refused", source=str(directory), reason=reason)

    def mark_bad(self, version: int, sha256: str, reason: str) -> None:
        """Refuse the store model of `version` with `sha256` on disk (it took the agent down)."""
        for directory, found, _ in self._candidates():
            if found != version:
                continue
            try:
                manifest = self._verifier.verify_manifest(directory, expiry=False).manifest
            except (ContractError, ModelError):
                continue
            if manifest.sha256 != sha256:
                continue
            fingerprint = self._store.fingerprint(directory)
            self._refuse(directory, fingerprint, reason, manifest)
            try:
                self._store.remember_refusal(fingerprint, reason)
            except OSError as exc:  # still refused in memory for this run
                log.warning("model_refusal_not_saved", source=str(directory), error=str(exc))

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
            offered = self._offered.pop(id(scorer), None)
            self._current = scorer
            self._current_dir = offered[1] if offered is not None else self._current_dir
        if trim:
            release_freed_memory()
        log.info("model_swapped", model=scorer.manifest.label, previous=previous)

    def reload_keys(self) -> None:
        """Read ``trusted_keys`` again and look again at models refused for their signature.

        Raises `ConfigError` (keys unchanged) when the directory has become unusable.
        """
        self.reload_trusted_keys(self._config)

    def reload_trusted_keys(self, config: ModelConfig) -> None:
        """Take the trusted keys of `config` (a reloaded config file: SIGHUP), read afresh.

        Call it on every reload, not only when the path changed: keys are added to and revoked
        in the same directory. Models refused for their signature are looked at again (the
        watcher is woken). `ConfigError`, keys unchanged, when the directory is unusable or
        signatures would be turned on or off (that needs a restart).
        """
        if (config.trusted_keys is None) != (self._verifier.keys is None):
            raise ConfigError(
                "config", "agent.model.trusted_keys", "turning signatures on or off takes a restart"
            )
        self._verifier.reload_keys(config.trusted_keys)
        self._config = self._config.model_copy(update={"trusted_keys": config.trusted_keys})
        with self._lock:
            self._refused = {fp: kind for fp, kind in self._refused.items() if kind != "signature"}
        if self._rescan is not None:
            self._rescan.set()

    def rescan_with(self, wakeup: threading.Event) -> None:
        """Set `wakeup` whenever the store should be looked at again (the model watcher's event)."""
        self._rescan = wakeup

    def prune(self) -> list[Path]:
        """Delete the store entries `agent.models.store.prune_plan` names; returns them."""
        with self._lock:
            current, directory = self._current, self._current_dir
            refused = {fp.path for fp, kind in self._refused.items() if kind == "content"}
            verified = {fp.path: version for fp, version in self._versions.items()}
            pending = {d for _, d, _ in self._offered.values()}
        running = (directory, current.manifest.version) if current is not None and directory else None
        doomed = [p for p in prune_plan(running, verified, refused) if p not in pending and p.exists()]
        for path in doomed:
            self._store.remove(path)
        return doomed

    def _candidates(self) -> list[tuple[Path, int, str | None]]:
        """Verified store entries: directory, version, and why it has expired (None: it has not)."""
        found: list[tuple[Path, int, str | None]] = []
        seen: dict[Fingerprint, int] = {}
        manifests = dict(self._manifests)
        for child in self._store.entries():
            fingerprint = self._store.fingerprint(child)
            if fingerprint in self._refused:
                continue
            known = self._versions.get(fingerprint)
            if known is None:
                try:
                    manifest = self._verifier.verify_manifest(child, expiry=False).manifest
                except (ContractError, ModelError) as exc:
                    self._refuse(child, fingerprint, str(exc), kind="signature")
                    continue
                self._raise_floor(manifest.version)
                known = manifest.version
                manifests[fingerprint] = manifest
            expired = _expired(child, manifests.get(fingerprint))
            seen[fingerprint] = known
            found.append((child, known, expired))
        with self._lock:
            self._versions = seen
            self._manifests = {fp: m for fp, m in manifests.items() if fp in seen}
        return found

    def _try_load(self, directory: Path, *, allow_expired: bool = False) -> OnnxScorer | None:
        fingerprint = self._store.fingerprint(directory)
        remembered = self._store.remembered_refusal(fingerprint)
        if remembered is not None:
            self._refuse(directory, fingerprint, f"{remembered} (remembered from an earlier check)")
            return None
        try:
            verified = self._verifier.verify_manifest(directory, expiry=not allow_expired)
        except (ContractError, ModelError) as exc:
            self._refuse(directory, fingerprint, str(exc), kind="signature")
            return None
        manifest, remember = verified.manifest, True
        refusal = self._guard.before_load(directory) if self._guard is not None else None
        if refusal is not None:  # the agent died loading it before (agent.crashguard)
            self._refuse(directory, fingerprint, refusal, manifest)
            return None
        try:
            model = self._verifier.check_content(verified)
            if self._limits is not None:
                verdict = probe_model(model.manifest_bytes, model.model_bytes, self._limits)
                log.info(
                    "model_probed",
                    model=manifest.label,
                    ok=verdict.ok,
                    seconds=round(verdict.seconds, 3),
                    peak_rss_bytes=verdict.peak_rss_bytes,
                )
                if not verdict.ok:
                    remember = verdict.model_fault
                    raise ModelRejectedError(f"{manifest.label}: {verdict.reason}")
            scorer = OnnxScorer(model.model_bytes, manifest)
            scorer.check_golden()
        except (ContractError, ModelError) as exc:
            self._refuse(directory, fingerprint, str(exc), manifest)
            if remember:
                self._store.remember_refusal(fingerprint, str(exc))
            return None
        finally:
            if self._guard is not None and refusal is None:
                self._guard.after_load(directory)
        log.info("model_verified", model=manifest.label, source=str(directory))
        return scorer

    def _raise_floor(self, version: int) -> None:
        try:
            self._store.raise_floor(version)
        except OSError as exc:  # a full disk must not stop a verified model; the floor is caught up later
            log.warning("model_floor_not_saved", version=version, error=str(exc))

    def _refuse(
        self,
        directory: Path,
        fingerprint: Fingerprint,
        reason: str,
        manifest: ModelManifest | None = None,
        *,
        kind: Verdict = "content",
    ) -> None:
        with self._lock:
            self._refused[fingerprint] = kind
            self._refusals.append(Refusal(directory, reason, manifest))
        log.warning("model_refused", source=str(directory), reason=reason)


def _expired(directory: Path, manifest: ModelManifest | None) -> str | None:
    """Why `manifest` has expired by now, or None (also when it is not known)."""
    if manifest is None:
        return None
    try:
        check_expiry(manifest, source=str(directory))
    except ModelRejectedError as exc:
        return str(exc)
    return None


def release_freed_memory() -> None:
    """Give freed heap back to the OS after an old onnxruntime session is dropped.

    Without it, RSS after repeated session swaps plateaus ~20 MiB above the first
    session. A no-op where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
