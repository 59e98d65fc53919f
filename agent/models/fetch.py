"""Fetching announced models into the store, off the MQTT thread and off the scoring loop.

The trainer publishes a `ModelAnnouncement` (retained) on ``robotpm/v1/models/<channel>``.
The transport hands each payload to `ModelFetcher.offer` on paho's network thread;
``offer`` only keeps it (the latest wins) and wakes the fetcher's own thread, which:

1. ignores an announcement whose version is not newer than the store's newest version
   (and the model in use), or that it already installed or refused;
2. accepts an ``https://`` URL only (``http://`` with ``allow_http``; redirects are held
   to the same rule), verifying the certificate and host name against the system trust
   store or ``download_ca_file``;
3. streams the bundle into a dot-directory inside the store (`agent.models.slot` ignores
   those), hashing as it reads and cutting it off past ``download_max_bytes`` or the
   announced length, then compares sha256 and length with the announcement;
4. unpacks the tar with `safe_extract` (regular files with the three expected names only,
   no paths, a size cap), checks the manifest names the announced model and version, and
   renames the directory to ``v<version>`` in the store.

From there the model is a store model like any other: `agent.models.watch` notices it,
`agent.models.verify` checks its signature and expiry, the golden test and probation follow.
Failures are logged with their reason and never reach the daemon; network failures and
digest mismatches (a stale cache) are retried with back-off, policy refusals are not.
URLs are logged without user info, query or fragment (they may hold tokens).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal
from urllib.parse import urlsplit, urlunsplit

import structlog
from pydantic import ValidationError

from agent.config import ModelConfig
from agent.contract.announcement import BUNDLE_MEMBERS, REQUIRED_MEMBERS, ModelAnnouncement
from agent.contract.errors import ConfigError, ContractError
from agent.contract.manifest import MANIFEST_FILE, ModelManifest

log = structlog.get_logger("robotpm.model")

_CHUNK = 64 * 1024
_BUNDLE_FILE = "bundle.tar"
_UNPACKED = "model"

Outcome = Literal["installed", "ignored", "refused", "failed"]


class FetchRefusedError(Exception):
    """The bundle or its announcement breaks a rule: not retried."""


class FetchFailedError(Exception):
    """The download did not work this time (network, server, stale copy): retried with back-off."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What became of one announcement."""

    outcome: Outcome
    detail: str
    announcement: ModelAnnouncement | None = None
    target: Path | None = None
    seconds: float = 0.0


def redact_url(url: str) -> str:
    """`url` without user info, query and fragment, for logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable url>"
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


def safe_extract(bundle: Path, destination: Path, max_bytes: int) -> list[str]:
    """Unpack a model bundle into the empty directory `destination`; returns the names written.

    Every member is checked before anything is written: a regular file (no links,
    directories or devices), named exactly one of `BUNDLE_MEMBERS` (so no absolute path
    and no ``..``), each at most once, all together at most `max_bytes`;
    ``model.onnx`` and ``manifest.json`` must be there. Raises `FetchRefusedError`.
    """
    import tarfile  # only an agent that fetches pays for it (~0.4 MiB)

    try:
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
    return sorted(seen)


def _copy_new(source: IO[bytes], path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        remaining = size
        while remaining > 0:
            chunk = source.read(min(_CHUNK, remaining))
            if not chunk:
                raise FetchRefusedError(f"bundle member {path.name!r} is truncated")
            out.write(chunk)
            remaining -= len(chunk)
        out.flush()
        os.fsync(out.fileno())


def newest_store_version(store: Path) -> int:
    """The highest version among the store's version directories (0 if none).

    Manifests are read without verifying them: this only decides whether a download
    could be newer; the model slot verifies what it loads.
    """
    newest = 0
    try:
        children = list(store.iterdir())
    except OSError:
        return 0
    for child in children:
        if child.name.startswith(".") or not (child / MANIFEST_FILE).is_file():
            continue
        try:
            newest = max(newest, ModelManifest.read(child).version)
        except (ContractError, OSError):
            continue
    return newest


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a scheme the config allows (no https → http downgrade)."""

    def __init__(self, schemes: frozenset[str]) -> None:
        self._schemes = schemes

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = urlsplit(newurl).scheme.lower()
        if scheme not in self._schemes:
            raise FetchRefusedError(f"redirect to a {scheme}:// URL refused ({redact_url(newurl)})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class ModelFetcher:
    """A thread that downloads announced bundles into the model store; see the module docstring.

    Raises `ConfigError` when ``download_ca_file`` cannot be loaded (at start, not later).

    ``floor`` gives the version in use (the store's own versions are read from disk), so
    an announcement the agent could not use is not downloaded. ``retry_delays`` are the
    waits before the 2nd, 3rd … attempt after a transient failure.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        floor: Callable[[], int] | None = None,
        retry_delays: Sequence[float] = (2.0, 10.0, 30.0),
    ) -> None:
        self._config = config
        self._floor = floor
        self._retry_delays = tuple(retry_delays)
        self._schemes = frozenset({"https", "http"} if config.allow_http else {"https"})
        try:
            context = ssl.create_default_context(
                cafile=None if config.download_ca_file is None else str(config.download_ca_file)
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                str(config.download_ca_file), "agent.model.download_ca_file", f"cannot load: {exc}"
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _SchemeCheckingRedirects(self._schemes)
        )
        self._lock = threading.Lock()
        self._pending: bytes | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._settled: set[tuple[str, int, str]] = set()  # installed or refused: not tried again
        self._results: deque[FetchResult] = deque(maxlen=64)

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
        """Stop the thread; a download in progress ends at its next read (or its timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def results(self) -> list[FetchResult]:
        """The latest results, oldest first (thread-safe)."""
        with self._lock:
            return list(self._results)

    # -- the work -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                payload, self._pending = self._pending, None
            if payload is not None and not self._stop.is_set():
                try:
                    self.process(payload)
                except Exception:  # never let a bug end the thread (or the agent)
                    log.exception("model_fetch_crashed")

    def process(self, payload: bytes) -> FetchResult:
        """Handle one announcement payload, retrying transient failures; returns what happened."""
        started = time.monotonic()
        if not payload:
            return self._record(FetchResult("ignored", "empty payload (announcement cleared)"))
        try:
            announcement = ModelAnnouncement.from_json(payload)
        except ValidationError as exc:
            reason = (
                f"not a model announcement: {exc.error_count()} error(s), first: {exc.errors()[0]['msg']}"
            )
            log.warning("model_announcement_invalid", reason=reason)
            return self._record(FetchResult("refused", reason))
        url = redact_url(announcement.url)
        ignored = self._why_ignored(announcement)
        if ignored is not None:
            log.info("model_announcement_ignored", model=announcement.label, reason=ignored)
            return self._record(FetchResult("ignored", ignored, announcement))
        key = (announcement.model_id, announcement.version, announcement.sha256)
        delays = (0.0, *self._retry_delays)
        detail = ""
        for attempt, delay in enumerate(delays, start=1):
            if delay and self._stop.wait(delay):
                return self._record(FetchResult("failed", f"stopped: {detail}", announcement))
            with self._lock:
                superseded = self._pending is not None
            if superseded and attempt > 1:
                return self._record(FetchResult("failed", f"superseded: {detail}", announcement))
            try:
                target = self._fetch(announcement)
            except FetchRefusedError as exc:
                detail = str(exc)
                self._settled.add(key)
                log.warning("model_fetch_refused", model=announcement.label, url=url, reason=detail)
                return self._record(FetchResult("refused", detail, announcement))
            except FetchFailedError as exc:
                detail = str(exc)
                log.warning(
                    "model_fetch_failed",
                    model=announcement.label,
                    url=url,
                    reason=detail,
                    attempt=attempt,
                    attempts=len(delays),
                )
                continue
            self._settled.add(key)
            seconds = time.monotonic() - started
            log.info("model_fetched", model=announcement.label, url=url, target=str(target), seconds=seconds)
            return self._record(FetchResult("installed", "", announcement, target, seconds))
        log.error("model_fetch_gave_up", model=announcement.label, url=url, reason=detail)
        return self._record(FetchResult("failed", detail, announcement))

    def _record(self, result: FetchResult) -> FetchResult:
        with self._lock:
            self._results.append(result)
        return result

    def _why_ignored(self, announcement: ModelAnnouncement) -> str | None:
        if self._config.channel is not None and announcement.channel != self._config.channel:
            return (
                f"announced on channel {announcement.channel!r}, this agent follows {self._config.channel!r}"
            )
        if (announcement.model_id, announcement.version, announcement.sha256) in self._settled:
            return "already installed or refused"
        floor = max(newest_store_version(self._config.directory), self._floor() if self._floor else 0)
        if announcement.version <= floor:
            return f"version {announcement.version} is not newer than {floor}"
        if (self._config.directory / f"v{announcement.version}").exists():
            return f"v{announcement.version} is already in the store"
        return None

    def _fetch(self, announcement: ModelAnnouncement) -> Path:
        config = self._config
        parts = urlsplit(announcement.url)
        if parts.scheme.lower() not in self._schemes:
            allowed = " or ".join(sorted(f"{s}://" for s in self._schemes))
            raise FetchRefusedError(f"URL scheme {parts.scheme or '(none)'!r} refused: only {allowed}")
        if not parts.hostname:
            raise FetchRefusedError("URL has no host")
        if announcement.length > config.download_max_bytes:
            raise FetchRefusedError(
                f"announced {announcement.length} bytes, over download_max_bytes {config.download_max_bytes}"
            )
        store = config.directory
        store.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=store))
        try:
            bundle = work / _BUNDLE_FILE
            self._download(announcement, bundle)
            unpacked = work / _UNPACKED
            unpacked.mkdir()
            safe_extract(bundle, unpacked, config.download_max_bytes)
            try:
                manifest = ModelManifest.read(unpacked)
            except ContractError as exc:
                raise FetchRefusedError(f"bundle manifest: {exc}") from None
            if (manifest.model_id, manifest.version) != (announcement.model_id, announcement.version):
                raise FetchRefusedError(
                    f"bundle holds {manifest.label}, the announcement names {announcement.label}"
                )
            target = store / f"v{announcement.version}"
            try:
                os.rename(unpacked, target)
            except OSError as exc:
                raise FetchRefusedError(f"cannot move it into the store as {target.name}: {exc}") from None
            _fsync_directory(store)
            return target
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _download(self, announcement: ModelAnnouncement, path: Path) -> None:
        limit = min(announcement.length, self._config.download_max_bytes)
        request = urllib.request.Request(announcement.url, headers={"User-Agent": "robotpm-agent"})
        digest = hashlib.sha256()
        total = 0
        try:
            with self._opener.open(request, timeout=self._config.download_timeout_s) as response:
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise FetchRefusedError(f"server sends {declared} bytes, more than {limit} allowed")
                with path.open("wb") as out:
                    while True:
                        if self._stop.is_set():
                            raise FetchFailedError("agent stopping")
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        total += len(chunk)
                        if total > limit:
                            raise FetchRefusedError(f"download cut off: more than {limit} bytes")
                        digest.update(chunk)
                        out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise FetchFailedError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise FetchRefusedError(f"server certificate refused: {exc.reason.verify_message}") from None
            raise FetchFailedError(f"cannot download: {exc.reason}") from None
        except (OSError, TimeoutError, ValueError, http.client.HTTPException) as exc:
            raise FetchFailedError(f"download broken off: {exc}") from None
        if total != announcement.length:
            raise FetchFailedError(f"got {total} bytes, the announcement says {announcement.length}")
        if digest.hexdigest() != announcement.sha256:
            raise FetchFailedError("sha256 of the download differs from the announcement")


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
