"""Finding and verifying newer models off the scoring thread.

Verifying a model (signature, static checks, the isolated probe, the session and its golden
test) takes from milliseconds to seconds; done in the daemon's loop it would stall scoring. A
`ModelWatcher` thread does it instead: it wakes when the model store (or the technician's
inbox, ``agent.model.inbox``) changes (inotify through the same `agent.filewatch.watcher.FileWatcher`
the streams use, with a stat poll every ``check_interval_s`` as the safety net), installs what
the inbox holds (`agent.models.inbox`), asks `ModelSlot.poll` for a verified newer version, and
leaves it for the loop, which only swaps the reference at the next tick (a window boundary). It
sets the loop's wakeup when a candidate is ready, so the swap does not wait for the loop's next
file event (the loop sleeps through appends that cannot complete a window).

After a swap (`request_trim`) it hands freed heap back to the OS and prunes the store
(`ModelSlot.prune`). `reload_keys` (for SIGHUP) reads the trusted keys again and looks at the
store once more.
"""

from __future__ import annotations

import threading
from pathlib import Path

import structlog

from agent.contract.errors import ConfigError
from agent.filewatch.watcher import FileWatcher, Signature
from agent.models.inbox import Inbox
from agent.models.install import BundleInstaller
from agent.models.scorer import OnnxScorer
from agent.models.slot import ModelSlot, release_freed_memory

log = structlog.get_logger("robotpm.model")


class ModelWatcher:
    """A thread that offers the loop verified newer models; `take` never blocks.

    ``ready``, if given, is set each time a candidate is ready (the loop's wakeup).
    """

    def __init__(
        self,
        slot: ModelSlot,
        store: Path,
        check_interval_s: float,
        ready: threading.Event | None = None,
    ) -> None:
        self._slot = slot
        self._store = store
        self._loop_wakeup = ready
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ready: OnnxScorer | None = None
        self._trim = False
        self._thread: threading.Thread | None = None
        slot.rescan_with(self._wake)
        config = slot.config
        self._inbox = (
            Inbox(
                config.inbox,
                BundleInstaller(
                    slot.store, slot.verifier, max_bytes=config.download_max_bytes, channel=config.channel
                ),
                slot.verifier,
            )
            if config.inbox is not None
            else None
        )
        self._watcher = FileWatcher(
            store,
            "auto",
            poll_interval_s=check_interval_s,
            coalesce_s=0.01,
            wakeup=self._wake,
            signature=self._signature,
            name="models",
        )

    def start(self) -> None:
        """Watch the store and start the checking thread."""
        self._store.mkdir(parents=True, exist_ok=True)
        self._watcher.start()
        self._trim = True  # prune once at start too
        self._wake.set()  # look once at start
        self._thread = threading.Thread(target=self._run, name="robotpm-model-watch", daemon=True)
        self._thread.start()

    def take(self) -> OnnxScorer | None:
        """The newest verified candidate not yet taken, or None."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def request_trim(self) -> None:
        """After a swap: hand freed heap back to the OS and prune the store, from this thread."""
        self._trim = True
        self._wake.set()

    def reload_keys(self) -> bool:
        """Read ``trusted_keys`` again and look at the store once more; False (keys kept) if unusable."""
        try:
            self._slot.reload_keys()
        except ConfigError as exc:
            log.error("trusted_keys_reload_failed", error=str(exc))
            return False
        return True

    def stop(self) -> None:
        """Stop the thread and the store watcher."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._watcher.stop()

    def _signature(self) -> Signature:
        store = self._slot.store.signature()
        if self._inbox is None:
            return store
        return store + tuple(
            (f"inbox/{name}", ino, size, mtime) for name, ino, size, mtime in self._inbox.signature()
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._check()
            except Exception as exc:  # never let a bad store kill the watcher
                log.error("model_check_failed", error=str(exc))

    def _check(self) -> None:
        if self._trim:
            self._trim = False
            release_freed_memory()
            self._slot.prune()
        if self._inbox is not None:
            self._inbox.scan()
        candidate = self._slot.poll()
        if candidate is not None:
            with self._lock:
                self._ready = candidate
            if self._loop_wakeup is not None:
                self._loop_wakeup.set()
