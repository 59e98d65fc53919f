"""Wake a loop when the files of a watched directory change: inotify plus a safety-net stat poll.

The watcher never reads files. It only says "look again", through two flags:

* the caller's ``wakeup`` event, set at once for the first change and then at most
  once per ``coalesce`` period however many file events arrive (a writer appending
  at 10 kHz yields one wakeup per period, not one per write: waking per write cost
  34% of a core at 1 kHz);
* `FileWatcher.take_rescan`, true when a directory itself changed (a file was created,
  renamed or deleted, or its permissions changed), so the caller lists it again.

A caller that knows it cannot use fewer than some number of new bytes of a file can
gate the wakeups for file writes with `FileWatcher.gate_wakeups`: the watcher then
stats that file after each batch of events and wakes the caller only once it is large
enough. Directory changes and the safety-net poll always wake it. While writes keep
coming and the gate stays closed, the watcher switches write events off and looks at
the file's size once per coalesce period instead: one wakeup per period rather than
two (the event, then the pause that lets more gather).

Backends, in order of preference for ``auto`` and ``inotify``: the in-tree inotify
binding (`agent.filewatch.inotify`: one read returns every queued event, and the
kernel merges repeated writes while the watcher waits out the coalesce period),
then watchdog's observer (for platforms without it). A stat poll runs every
``poll_interval`` without events in every mode: with inotify it is the safety net
(queue overflow, missed events); in ``poll`` mode it is the only source. When no
inotify backend can be set up in ``auto`` mode the watcher degrades to polling and
says so in `FileWatcher.mode`.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from agent.errors import WatchError
from agent.filewatch.inotify import DIRECTORY_MASK, IN_MODIFY, Inotify

QUIET_PERIODS = 4
"""Coalesce periods without growth after which a gated watcher switches write events back on."""

Signature = tuple[tuple[str, int, int, int], ...]
"""(name, inode, size, mtime) of every watched file: what the stat poll compares."""
WatchMode = Literal["auto", "inotify", "poll"]


class FileWatcher:
    """Watches one directory (and extra directories, e.g. of symlink targets) and wakes its caller."""

    def __init__(
        self,
        directory: Path,
        mode: WatchMode,
        poll_interval_s: float,
        coalesce_s: float,
        wakeup: threading.Event,
        signature: Callable[[], Signature],
        name: str = "files",
    ) -> None:
        self._directory = directory
        self._requested: WatchMode = mode
        self._poll_interval = poll_interval_s
        self._coalesce = coalesce_s
        self._wakeup = wakeup
        self._signature = signature
        self._name = name
        self._activity = threading.Event()
        self._stop = threading.Event()
        self._rescan = True
        self._thread: threading.Thread | None = None
        self._observer: object | None = None
        self._inotify: Inotify | None = None
        self._extra: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop_pipe: tuple[int, int] | None = None
        self._gate: tuple[str, int] | None = None
        self.mode: Literal["inotify", "poll"] = "poll"
        self.backend: Literal["inotify", "watchdog", "poll"] = "poll"
        self.events = 0
        """File events received (for stats)."""
        self.wakeups = 0
        """Times the caller's wakeup was set."""
        self.gated = 0
        """Batches of file writes that did not wake the caller (see `gate_wakeups`)."""

    def start(self) -> None:
        """Set up inotify (unless poll mode) and start the watching thread."""
        if self._requested != "poll":
            self._start_events()
        try:
            first: Signature | None = self._signature()
        except OSError:
            first = None
        self._stop_pipe = os.pipe()
        self._thread = threading.Thread(
            target=self._run, args=(first,), name=f"robotpm-watch-{self._name}", daemon=True
        )
        self._thread.start()

    def _start_events(self) -> None:
        if not self._directory.is_dir():
            problem: Exception = OSError(f"not a directory: {self._directory}")
        else:
            try:
                inotify = Inotify()
                try:
                    inotify.add_watch(str(self._directory))
                except OSError:
                    inotify.close()
                    raise
                self._inotify = inotify
                self.mode = self.backend = "inotify"
                return
            except OSError as exc:
                problem = exc
            try:
                self._observer = self._start_watchdog()
                self.mode, self.backend = "inotify", "watchdog"
                return
            except (OSError, RuntimeError, ImportError) as exc:
                problem = exc
        if self._requested == "inotify":
            raise WatchError(f"{self._directory}: cannot watch for file events: {problem}") from problem
        self.mode = self.backend = "poll"

    def take_rescan(self) -> bool:
        """Whether a directory changed since the last call (then list it again)."""
        rescan, self._rescan = self._rescan, False
        return rescan

    def gate_wakeups(self, path: str | None, size: int = 0) -> None:
        """Wake the caller for file writes only once the file at `path` holds `size` bytes.

        None removes the gate: every batch of writes wakes the caller again.
        """
        self._gate = None if path is None else (path, size)

    def _gate_open(self) -> bool:
        gate = self._gate  # one read: the caller may replace it meanwhile
        if gate is None:
            return True
        try:
            return os.stat(gate[0]).st_size >= gate[1]
        except OSError:
            return True

    def _set_write_events(self, on: bool) -> bool:
        """Switch the directory watch's write events on or off; False when that is not possible."""
        inotify = self._inotify
        if inotify is None:
            return False
        with self._lock:
            if not on and self._extra:
                return False  # symlinked files live elsewhere: keep it simple, stay event-driven
            try:
                inotify.add_watch(str(self._directory), DIRECTORY_MASK if on else DIRECTORY_MASK & ~IN_MODIFY)
            except OSError:
                return False
        return True

    def _follow_size(self) -> None:
        """Look at the gated file's size once per coalesce period until the caller must be woken.

        Entered with the gate closed while writes come in; write events are off meanwhile.
        Returns when the gate opens or is lifted, a directory changes, or the file stopped
        growing for `QUIET_PERIODS` periods, with write events on again.
        """
        inotify = self._inotify
        assert inotify is not None
        assert self._stop_pipe is not None
        if not self._set_write_events(False):
            return
        last_size, quiet = -1, 0
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([inotify.fd, self._stop_pipe[0]], [], [], self._coalesce)
                if self._stop.is_set():
                    return
                if inotify.fd in ready:
                    events = inotify.read()
                    self.events += len(events)
                    if any(event.mask != IN_MODIFY for event in events):
                        self._rescan = True
                gate = self._gate
                try:
                    size = os.stat(gate[0]).st_size if gate is not None else -1
                except OSError:
                    gate = None
                if self._rescan or gate is None or size >= gate[1]:
                    self.wakeups += 1
                    self._wakeup.set()
                    return
                self.gated += 1
                quiet = quiet + 1 if size == last_size else 0
                if quiet >= QUIET_PERIODS:
                    return
                last_size = size
        finally:
            self._set_write_events(True)
            # a write between the last look and switching events on raised no event: look once more
            if not self._stop.is_set() and self._gate_open():
                self.wakeups += 1
                self._wakeup.set()

    def request_rescan(self) -> None:
        """Ask for a rescan and a wakeup."""
        self._rescan = True
        self._activity.set()

    def watch_extra(self, directories: set[str]) -> None:
        """Also watch these directories (where symlinked files really live); others are dropped."""
        inotify = self._inotify
        if inotify is None:
            return
        with self._lock:
            for gone in set(self._extra) - directories:
                inotify.rm_watch(self._extra.pop(gone))
            for new in directories - set(self._extra):
                with contextlib.suppress(OSError):  # vanished or unreadable: the poll covers it
                    self._extra[new] = inotify.add_watch(new)

    def stop(self) -> None:
        """Stop the thread and the observer, wait for both, close descriptors."""
        self._stop.set()
        self._activity.set()
        if self._stop_pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_pipe[1], b"x")
        observer = self._observer
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            observer.join(timeout=5)  # type: ignore[attr-defined]
            self._observer = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._stop_pipe is not None:
            for fd in self._stop_pipe:
                os.close(fd)
            self._stop_pipe = None

    def _start_watchdog(self) -> object:
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                watcher.events += 1
                if event.event_type != "modified":
                    watcher._rescan = True
                watcher._activity.set()

        observer = Observer(timeout=0.2)
        observer.schedule(
            _Handler(),
            str(self._directory),
            recursive=False,
            event_filter=[
                FileModifiedEvent,
                FileCreatedEvent,
                FileMovedEvent,
                FileDeletedEvent,
                DirCreatedEvent,
                DirDeletedEvent,
                DirMovedEvent,
            ],
        )
        observer.daemon = True
        observer.name = f"robotpm-watchdog-{self._name}"
        observer.start()
        return observer

    def _wait_for_events(self) -> bool:
        """Block up to one poll interval; True when file events arrived."""
        inotify = self._inotify
        if inotify is None:
            if self._activity.wait(self._poll_interval):
                self._activity.clear()
                return not self._stop.is_set()
            return False
        assert self._stop_pipe is not None
        ready, _, _ = select.select([inotify.fd, self._stop_pipe[0]], [], [], self._poll_interval)
        if self._stop.is_set() or inotify.fd not in ready:
            return False
        events = inotify.read()
        self.events += len(events)
        if any(event.mask != IN_MODIFY for event in events):
            self._rescan = True
        return bool(events)

    def _run(self, previous: Signature | None) -> None:
        while not self._stop.is_set():
            if self._wait_for_events():
                if self._rescan or self._gate_open():
                    self.wakeups += 1
                    self._wakeup.set()
                else:
                    self.gated += 1
                    if self._coalesce > 0 and self._inotify is not None:
                        self._follow_size()
                        continue
                if self._coalesce > 0:
                    self._stop.wait(self._coalesce)  # let more events gather (the kernel merges them)
                continue
            if self._stop.is_set():
                return
            try:
                current = self._signature()
            except OSError:
                continue
            if current != previous:
                if previous is not None:
                    if [(p, i) for p, i, _, _ in current] != [(p, i) for p, i, _, _ in previous]:
                        self._rescan = True
                    self.wakeups += 1
                    self._wakeup.set()
                previous = current
