"""Fetching announced models into the store, off the MQTT thread and off the scoring loop.

The trainer publishes a signed announcement (retained) on ``robotpm/v1/models/<channel>`` and
writes the same bytes to its web root as the channel's index. The transport hands each MQTT
payload to `ModelFetcher.offer` on paho's network thread; ``offer`` only keeps it (the latest
wins) and wakes the fetcher's own thread, which:

1. verifies the announcement (`agent.models.verify.ModelVerifier.verify_announcement`: with
   trusted keys it must be signed by a release key certified for its channel; nothing in it
   is acted on before that) and ignores it unless it is for the followed channel and newer than
   the store's version floor and the model in use;
2. downloads the bundle (`agent.models.download`): https only (``allow_http`` aside), same-origin
   redirects, a total deadline, resumed with HTTP Range after a break, cut off past the announced
   length; its sha256 and length must match the announcement;
3. installs it (`agent.models.install`): unpacked, verified and checked in a staging directory,
   renamed into the store only then. A refused bundle leaves nothing.

**Convergence.** A failure of the network, the server or the store is retried after a capped,
jittered exponential back-off (`agent.models.backoff`: ``retry_first_s`` doubling up to
``retry_max_s``, an hour) for as long as no newer announcement supersedes it: the fetcher never
gives up. With ``index_url`` set, the channel's index is polled every ``index_interval_s``
(with ``If-None-Match``), so a robot that missed every MQTT announcement still converges. A
broken rule (signature, scheme, origin, size, bundle members, version) is not retried.

Failures are logged with their reason and never reach the daemon. URLs are logged without
user info, query or fragment (they may hold tokens).
"""

from __future__ import annotations

import hashlib
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from agent.config import ModelConfig
from agent.contract.announcement import MAX_SIGNED_DOCUMENT_BYTES, ModelAnnouncement
from agent.contract.errors import ConfigError
from agent.errors import FetchFailedError, FetchRefusedError, ModelError, ModelRejectedError, ModelStoreError
from agent.models.backoff import Backoff
from agent.models.download import Downloader, redact_url
from agent.models.install import BundleInstaller
from agent.models.store import ModelStore
from agent.models.verify import ModelVerifier

log = structlog.get_logger("robotpm.model")

Outcome = Literal["installed", "ignored", "refused", "failed"]

__all__ = ["FetchResult", "ModelFetcher", "redact_url"]


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What became of one announcement (or one attempt at it)."""

    outcome: Outcome
    detail: str
    announcement: ModelAnnouncement | None = None
    target: Path | None = None
    seconds: float = 0.0
    attempt: int = 1


@dataclass(slots=True)
class _Job:
    announcement: ModelAnnouncement
    started: float
    failures: int = 0
    next_try: float = 0.0

    @property
    def key(self) -> tuple[str, int, str]:
        return self.announcement.model_id, self.announcement.version, self.announcement.sha256


class ModelFetcher:
    """A thread that downloads announced bundles into the model store; see the module docstring.

    Raises `ConfigError` when ``download_ca_file`` cannot be loaded (at start, not later).
    ``floor`` gives the version in use; ``verifier`` should be the slot's
    (`agent.models.slot.ModelSlot.verifier`), so reloading the keys reaches both; ``on_step``
    is told each install step (``downloading``, ``downloaded`` and those of `BundleInstaller`).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        floor: Callable[[], int] | None = None,
        verifier: ModelVerifier | None = None,
        backoff: Backoff | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._floor = floor
        self._verifier = verifier or ModelVerifier.from_config(config)
        self._store = ModelStore(config.directory, config.store_max_bytes)
        self._on_step = on_step or (lambda step: None)
        self._installer = BundleInstaller(
            self._store,
            self._verifier,
            max_bytes=config.download_max_bytes,
            channel=config.channel,
            on_step=self._on_step,
        )
        self._backoff = backoff or Backoff(
            config.retry_first_s, max(config.retry_first_s, config.retry_max_s)
        )
        try:
            context = ssl.create_default_context(
                cafile=None if config.download_ca_file is None else str(config.download_ca_file)
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                str(config.download_ca_file), "agent.model.download_ca_file", f"cannot load: {exc}"
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._downloader = Downloader(
            context=context,
            schemes=frozenset({"https", "http"} if config.allow_http else {"https"}),
            stall_timeout_s=config.download_timeout_s,
        )
        self._lock = threading.Lock()
        self._pending: bytes | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._settled: set[tuple[str, int, str]] = set()  # installed or refused: not tried again
        self._results: deque[FetchResult] = deque(maxlen=64)
        self._job: _Job | None = None
        self._index_etag: str | None = None
        self._jitter = random.Random()

    # -- the transport's side (paho's thread) -----------------------------------

    def offer(self, payload: bytes) -> None:
        """Keep an announcement payload for the fetcher thread (the latest wins); never blocks."""
        with self._lock:
            self._pending = payload
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the fetcher thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="robotpm-model-fetch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a download in progress is cut off at once."""
        self._stop.set()
        self._downloader.abort()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def results(self) -> list[FetchResult]:
        """The latest results, oldest first (thread-safe)."""
        with self._lock:
            return list(self._results)

    # -- synchronous entry points (also what the thread does) -----------------------------------

    def process(self, payload: bytes, *, attempts: int = 1) -> FetchResult:
        """Handle one announcement payload now, with up to `attempts` tries; returns what happened."""
        job = self._consider(payload, "announcement")
        if isinstance(job, FetchResult):
            return job
        result = self._attempt(job)
        while result.outcome == "failed" and job.failures < attempts and not self._stop.is_set():
            if self._stop.wait(max(0.0, job.next_try - time.monotonic())):
                break
            result = self._attempt(job)
        return result

    def check_index(self) -> FetchResult | None:
        """Look at the channel index once (``index_url``) and fetch what it announces; None if unchanged."""
        url = self._config.index_url
        if url is None:
            return None
        job = self._index_job(url)
        return job if isinstance(job, FetchResult) or job is None else self._attempt(job)

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        next_index = time.monotonic() if self._config.index_url else None
        while not self._stop.is_set():
            now = time.monotonic()
            waits = [
                t - now for t in (self._job.next_try if self._job else None, next_index) if t is not None
            ]
            self._wake.wait(max(0.0, min(waits)) if waits else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._step(next_index)
            except Exception:  # never let a bug end the thread (or the agent)
                log.exception("model_fetch_crashed")
            if next_index is not None and time.monotonic() >= next_index:
                next_index = time.monotonic() + self._config.index_interval_s * (
                    0.9 + 0.2 * self._jitter.random()
                )

    def _step(self, next_index: float | None) -> None:
        with self._lock:
            payload, self._pending = self._pending, None
        if payload is not None:
            self._take(self._consider(payload, "announcement"))
        if next_index is not None and time.monotonic() >= next_index and self._config.index_url:
            self._take(self._index_job(self._config.index_url))
        job = self._job
        if job is None or time.monotonic() < job.next_try:
            return
        if self._attempt(job).outcome != "failed":
            self._job = None

    def _take(self, job: _Job | FetchResult | None) -> None:
        if not isinstance(job, _Job):
            return
        current = self._job
        if current is not None and current.announcement.version >= job.announcement.version:
            return
        if current is not None:
            log.info("model_fetch_superseded", model=current.announcement.label, by=job.announcement.label)
        self._job = job

    # -- one announcement -------------------------------------------------------------------------

    def _consider(self, payload: bytes, source: str) -> _Job | FetchResult:
        if not payload:
            return self._record(FetchResult("ignored", "empty payload (announcement cleared)"))
        try:
            announcement = self._verifier.verify_announcement(payload)
        except ModelRejectedError as exc:
            log.warning("model_announcement_refused", source=source, reason=str(exc))
            return self._record(FetchResult("refused", str(exc)))
        ignored = self._why_ignored(announcement)
        if ignored is not None:
            self._store.discard_partials(keep=self._job.announcement.sha256 if self._job else None)
            log.info("model_announcement_ignored", model=announcement.label, source=source, reason=ignored)
            return self._record(FetchResult("ignored", ignored, announcement))
        return _Job(announcement, time.monotonic())

    def _index_job(self, url: str) -> _Job | FetchResult | None:
        try:
            fetched = self._downloader.get(
                url,
                limit=MAX_SIGNED_DOCUMENT_BYTES,
                deadline_s=min(60.0, self._config.download_deadline_s),
                etag=self._index_etag,
            )
        except (FetchFailedError, FetchRefusedError) as exc:
            log.warning("model_index_failed", url=redact_url(url), reason=str(exc))
            return self._record(FetchResult("failed", f"channel index: {exc}"))
        if fetched.status == 304:
            return None
        self._index_etag = fetched.etag
        return self._consider(fetched.body, "index")

    def _why_ignored(self, announcement: ModelAnnouncement) -> str | None:
        if self._config.channel is not None and announcement.channel != self._config.channel:
            return (
                f"announced on channel {announcement.channel!r}, this agent follows {self._config.channel!r}"
            )
        key = (announcement.model_id, announcement.version, announcement.sha256)
        if key in self._settled:
            return "already installed or refused"
        if self._job is not None and self._job.key == key:
            return "already being fetched"
        floor = max(self._store.floor, self._floor() if self._floor else 0)
        if announcement.version <= floor:
            return f"version {announcement.version} is not newer than {floor}"
        if self._store.version_dir(announcement.version).exists():
            return f"v{announcement.version} is already in the store"
        return None

    def _attempt(self, job: _Job) -> FetchResult:
        announcement = job.announcement
        url = redact_url(announcement.url)
        started = time.monotonic()
        try:
            target = self._fetch(announcement)
        except FetchRefusedError as exc:
            self._settled.add(job.key)
            self._store.discard_partials()
            log.warning("model_fetch_refused", model=announcement.label, url=url, reason=str(exc))
            return self._record(FetchResult("refused", str(exc), announcement, attempt=job.failures + 1))
        except (FetchFailedError, ModelStoreError, ModelError, OSError) as exc:
            job.failures += 1
            retry_in = self._backoff.delay(job.failures)
            job.next_try = time.monotonic() + retry_in
            log.warning(
                "model_fetch_failed",
                model=announcement.label,
                url=url,
                reason=str(exc),
                attempt=job.failures,
                retry_in_s=round(retry_in, 1),
            )
            return self._record(FetchResult("failed", str(exc), announcement, attempt=job.failures))
        self._settled.add(job.key)
        seconds = time.monotonic() - started
        log.info("model_fetched", model=announcement.label, url=url, target=str(target), seconds=seconds)
        return self._record(FetchResult("installed", "", announcement, target, seconds, job.failures + 1))

    def _fetch(self, announcement: ModelAnnouncement) -> Path:
        cap = self._config.download_max_bytes
        if announcement.length > cap:
            raise FetchRefusedError(f"announced {announcement.length} bytes, over download_max_bytes {cap}")
        self._store.discard_partials(keep=announcement.sha256)
        self._store.ensure_room(2 * announcement.length)
        partial = self._store.partial(announcement.sha256)
        reported: list[bool] = []

        def progress(size: int) -> None:
            if not reported:
                reported.append(True)
                self._on_step("downloading")

        size = self._downloader.download(
            announcement.url,
            partial,
            limit=announcement.length,
            deadline_s=self._config.download_deadline_s,
            on_chunk=progress,
        )
        self._on_step("downloaded")
        if size != announcement.length:
            raise FetchFailedError(f"got {size} bytes, the announcement says {announcement.length}")
        if _sha256(partial) != announcement.sha256:
            partial.unlink(missing_ok=True)
            raise FetchFailedError("sha256 of the download differs from the announcement")
        try:
            target, _ = self._installer.install(partial, expect=announcement)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def _record(self, result: FetchResult) -> FetchResult:
        with self._lock:
            self._results.append(result)
        return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
