"""Finding and verifying newer models off the scoring thread.

Loading an onnxruntime session and running its golden test takes tens of
milliseconds; done in the daemon's loop it would stall scoring for that long. A
`ModelWatcher` thread does it instead: it wakes when the model store changes
(inotify through the same `agent.filewatch.watcher.FileWatcher` the streams use, with a
stat poll every ``check_interval_s`` as the safety net), asks `ModelSlot.poll`
for a verified newer version, and leaves it for the loop, which only swaps the
reference at the next tick (a window boundary). It sets the loop's wakeup when a
candidate is ready, so the swap does not wait for the loop's next file event (the
loop sleeps through appends that cannot complete a window).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import structlog

from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
from agent.filewatch.watcher import FileWatcher, Signature
from agent.models.scorer import OnnxScorer
from agent.models.slot import ModelSlot, release_freed_memory

log = structlog.get_logger("robotpm.model")


def store_signature(store: Path) -> Signature:
    """What changes when a version is added to, replaced in or removed from the store.

    The signature file counts too: a model refused for lacking one is checked again once it arrives.
    """
    entries: list[tuple[str, int, int, int]] = []
    try:
        children = sorted(os.scandir(store), key=lambda e: e.name)
    except OSError:
        return ()
    for child in children:
        for name in (MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE):
            try:
                st = os.stat(os.path.join(child.path, name))
            except OSError:
                continue
            entries.append((f"{child.name}/{name}", st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(entries)


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
        self._watcher = FileWatcher(
            store,
            "auto",
            poll_interval_s=check_interval_s,
            coalesce_s=0.01,
            wakeup=self._wake,
            signature=lambda: store_signature(store),
            name="models",
        )

    def start(self) -> None:
        """Watch the store and start the checking thread."""
        self._store.mkdir(parents=True, exist_ok=True)
        self._watcher.start()
        self._wake.set()  # look once at start
        self._thread = threading.Thread(target=self._run, name="robotpm-model-watch", daemon=True)
        self._thread.start()

    def take(self) -> OnnxScorer | None:
        """The newest verified candidate not yet taken, or None."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def request_trim(self) -> None:
        """Hand freed heap back to the OS from this thread (after the loop dropped an old session)."""
        self._trim = True
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread and the store watcher."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._watcher.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._trim:
                self._trim = False
                release_freed_memory()
            try:
                candidate = self._slot.poll()
            except Exception as exc:  # never let a bad store kill the watcher
                log.error("model_check_failed", error=str(exc))
                continue
            if candidate is not None:
                with self._lock:
                    self._ready = candidate
                if self._loop_wakeup is not None:
                    self._loop_wakeup.set()
