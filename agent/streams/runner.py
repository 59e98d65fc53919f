"""One stream inside the daemon's loop: its follower, its pipeline, the lines held back, wake-up gating.

The daemon keeps one `StreamRunner` per configured stream and calls `step` once a
tick. A step reads what the follower has, and holds it (read, not parsed) while
it is too short to complete the next window: such lines cannot cause an alert.
The held reads are processed as soon as they can complete a window, reach the
read chunk, or have waited ``ingest.max_hold_s``; the line that completes a
window is therefore scored in the tick that read it. The file watcher is told
the same thing in bytes (lines still needed × the shortest line seen), so it does
not wake the loop for appends that cannot complete a window.

`position` is the follower's state as of the last line the pipeline processed:
while lines are held, a commit saves the position from before them, so a crash
reads them again instead of skipping them.

A failure confined to the stream never leaves it: any error its follower or
pipeline raises (permission, a vanished or replaced directory, too many open
files, an I/O error, a bug) puts the stream in a degraded state (`degraded_reason`, logged
as ``stream_degraded``) and rewinds it to its last committed state, so nothing read
since is lost or counted twice; it is retried after 1 s, then twice as long each
time up to ``ingest.retry_max_s``, and reported ``stream_recovered`` once a step
works again. A stream directory that disappears is reported the same way (reading
goes on: files held open can still be drained). A stream can also be `skip`ped
(it made the agent die before, see `agent.crashguard`): it is not touched until
its retry time.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from typing import Any

import structlog

from agent.config import IngestConfig
from agent.contract.alerts import AlertEvent
from agent.errors import IngestError, WatchError
from agent.ingest import LineBlock, StreamFollower
from agent.streams.pipeline import StreamPipeline

log = structlog.get_logger("robotpm.agent")

HeldRead = tuple[list[LineBlock], bool]
"""Blocks read together, with their ``replayed`` flag (read before the stream first caught up)."""

FIRST_RETRY_S = 1.0
_EXPECTED = (OSError, IngestError, WatchError)
"""What the file system can make a stream raise: logged without a traceback."""


class StreamRunner:
    """Follower + pipeline of one stream, and the reads held until they can complete a window."""

    def __init__(
        self,
        pipeline: StreamPipeline,
        follower: StreamFollower,
        ingest: IngestConfig,
        wakeup: threading.Event,
    ) -> None:
        self.pipeline = pipeline
        self.follower = follower
        self._ingest = ingest
        self._wakeup = wakeup
        self.position: dict[str, Any] = follower.state()
        """The follower's state as of the last line the pipeline processed."""
        self.caught_up = False
        self.unsaved = False
        """Lines were processed since the last commit (`saved` clears it)."""
        self._held: list[HeldRead] = []
        self._held_lines = 0
        self._held_bytes = 0
        self._held_since = 0.0
        self._started = False
        self._committed: dict[str, Any] | None = None  # the state the last commit saved
        self._proposed: dict[str, Any] | None = None  # the state handed to the commit in progress
        self._failure: str | None = None
        self._failures = 0
        self._retry_at = float("-inf")
        self._missing: str | None = None
        self._next_directory_check = float("-inf")
        self.skipped = False
        """Left alone for an earlier death (see `skip`) and not yet recovered."""
        self.healthy_steps = 0
        """Steps that worked since the start."""

    @property
    def name(self) -> str:
        """The stream's name."""
        return self.pipeline.name

    def degraded_reason(self) -> str | None:
        """Why the stream is degraded (None: it is not).

        Failing, skipped, its directory missing, some of its files refused (a FIFO or device
        node in a log file's place, an unreadable file), or its pipeline's reason (a rate the
        model was not trained for).
        """
        return self._failure or self._missing or self.follower.refused() or self.pipeline.degraded_reason()

    def restore(self, saved: dict[str, Any] | None) -> None:
        """Resume follower and pipeline from the state committed last (None: a fresh stream).

        A damaged saved state is discarded (logged): every file is then read from its start.
        """
        discarded = self.follower.counters["state_discarded"]
        self.follower.restore(saved.get("follower") if saved else None)
        reason = None
        if saved and self.follower.counters["state_discarded"] > discarded:
            # The follower reads every file from its start again: an open window restored
            # from the same row would be continued with lines it already holds.
            reason = "damaged follower state"
        else:
            try:
                self.pipeline.restore(saved.get("pipeline") if saved else None)
            except Exception as exc:  # anything a damaged row can make the decoder raise
                reason = f"damaged pipeline state ({type(exc).__name__}: {exc})"
        if reason is not None:
            log.warning("stream_state_discarded", stream=self.name, reason=reason)
            saved = None
            self.follower.restore(None)
            self.pipeline.restore(None)
        self._committed = saved
        self._drop_held()
        self.position = self.follower.state()

    def start(self, now: float) -> None:
        """Start watching the stream's files (a failure degrades the stream, it is retried)."""
        if self._retry_at > now:
            return
        try:
            self._start()
        except Exception as exc:
            self._fail(now, exc)

    def skip(self, now: float, reason: str, retry_after_s: float) -> None:
        """Leave the stream alone for `retry_after_s`, reported degraded for `reason`."""
        self._failure = f"skipped: {reason}"
        self.skipped = True
        self._retry_at = now + retry_after_s
        log.error("stream_skipped", stream=self.name, reason=reason, retry_in_s=round(retry_after_s, 1))

    def close(self) -> None:
        """Stop watching and close the files."""
        self.follower.close()

    def hold_deadline(self) -> float | None:
        """When (monotonic) the reads held now must be processed at the latest; None: nothing held."""
        return self._held_since + self._ingest.max_hold_s if self._held else None

    def step(self, now: float) -> list[AlertEvent]:
        """Read what is new, hold it or process it; returns the alert events it caused.

        Never raises: a failure degrades the stream (see the module docstring).
        """
        if self._retry_at > now:
            return []
        try:
            self._start()
            events = self._step(now)
        except Exception as exc:
            self._fail(now, exc)
            return []
        if self._failure is not None:
            log.info("stream_recovered", stream=self.name, after=self._failure, attempts=self._failures)
            self._failure, self._failures, self.skipped = None, 0, False
        self.healthy_steps += 1
        self._check_directory(now)
        return events

    def _start(self) -> None:
        if not self._started:
            self.follower.start()
            self._started = True

    def _fail(self, now: float, exc: Exception) -> None:
        """Degrade the stream, rewind it to its last committed state, and retry it later."""
        reason = f"{type(exc).__name__}: {exc}"
        self._failures += 1
        delay = min(self._ingest.retry_max_s, FIRST_RETRY_S * 2.0 ** min(self._failures - 1, 30))
        self._retry_at = now + delay
        if reason != self._failure:
            log.warning(
                "stream_degraded",
                stream=self.name,
                reason=reason,
                attempts=self._failures,
                retry_in_s=delay,
                exc_info=not isinstance(exc, _EXPECTED),  # a bug: keep its traceback in the log
            )
        self._failure = reason
        try:
            self.restore(self._committed)
        except Exception:  # cannot even rewind: read everything again (duplicates, never loss)
            log.exception("stream_rewind_failed", stream=self.name)
            self._committed = None
            self.follower.restore(None)
            self.pipeline.restore(None)
            self.position = self.follower.state()

    def _check_directory(self, now: float) -> None:
        """Report the stream's directory missing (checked once per rescan interval)."""
        if now < self._next_directory_check:
            return
        self._next_directory_check = now + self._ingest.rescan_interval_s
        directory = self.pipeline.stream.directory
        if os.path.isdir(directory):
            if self._missing is not None:
                log.info("stream_directory_back", stream=self.name, directory=str(directory))
                self._missing = None
        elif self._missing is None:
            self._missing = f"directory missing: {directory}"
            log.warning("stream_degraded", stream=self.name, reason=self._missing)

    def _step(self, now: float) -> list[AlertEvent]:
        max_bytes = self._ingest.read_chunk_bytes
        blocks = self.follower.read(max_bytes)
        if blocks:
            size = sum(len(b.data) for b in blocks)
            self._hold(blocks, not self.caught_up, size, now)
            if size < max_bytes:
                self.caught_up = True
            else:
                self._wakeup.set()  # more is waiting: come straight back
        else:
            self.caught_up = True
        events: list[AlertEvent] = []
        if self._held and (
            self._held_lines >= self.pipeline.lines_to_next_window
            or self._held_bytes >= max_bytes
            or now - self._held_since >= self._ingest.max_hold_s
        ):
            events = self._flush()
        if self._ingest.max_hold_s > 0:
            self._gate_wakeups()
        return events

    def flush(self) -> list[AlertEvent]:
        """Process the held reads now (at shutdown); a failure degrades the stream, never raises."""
        try:
            return self._flush()
        except Exception as exc:
            self._fail(float("inf"), exc)
            return []

    def _flush(self) -> list[AlertEvent]:
        """Process the held reads in order; the stream's position then moves past them."""
        if not self._held:
            return []
        events: list[AlertEvent] = []
        for blocks, replayed in self._release():
            events.extend(self.pipeline.process(blocks, replayed=replayed))
        self.position = self.follower.state()
        self.unsaved = True
        return events

    def state(self) -> dict[str, Any]:
        """The state to commit: the pipeline's, and the follower's position before any held line."""
        if not self._held:  # everything read was processed: the live position is the one
            self.position = self.follower.state()
        self._proposed = {"pipeline": self.pipeline.state(), "follower": self.position}
        return self._proposed

    def saved(self) -> None:
        """The state from `state` was committed."""
        self.unsaved = False
        if self._proposed is not None:
            self._committed, self._proposed = self._proposed, None

    def _hold(self, blocks: list[LineBlock], replayed: bool, size: int, now: float) -> None:
        if not self._held:
            self._held_since = now
        self._held.append((blocks, replayed))
        self._held_lines += sum(b.data.count(b"\n") for b in blocks)
        self._held_bytes += size

    def _drop_held(self) -> None:
        self._held = []
        self._held_lines = self._held_bytes = 0

    def _release(self) -> list[HeldRead]:
        """The held reads, with runs of adjacent blocks of one file joined (one parse, not one per read)."""
        held = self._held
        self._drop_held()
        out: list[HeldRead] = []
        for blocks, replayed in held:
            if out and out[-1][1] == replayed:
                out[-1][0].extend(blocks)
            else:
                out.append((list(blocks), replayed))
        return [(join_adjacent(blocks), replayed) for blocks, replayed in out]

    def _gate_wakeups(self) -> None:
        """Be woken for appends only once enough bytes arrived to hold the lines the next window needs.

        The bound is the lines still needed times the shortest valid line seen: lines that
        shrink below it make that one wakeup late, by at most the poll interval.
        """
        need = self.pipeline.lines_to_next_window - self._held_lines
        shortest = self.pipeline.shortest_line
        self.follower.wake_after(need * shortest if shortest is not None and need > 1 else None)


def join_adjacent(blocks: list[LineBlock]) -> list[LineBlock]:
    """Join consecutive blocks that continue each other in one file (same header, nothing rejected)."""
    out: list[LineBlock] = []
    run: list[LineBlock] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            first = run[0]
            out.append(replace(first, data=b"".join(b.data for b in run)))
        run.clear()

    for block in blocks:
        if run:
            last = run[-1]
            if (
                block.rejected
                or block.file_key != last.file_key
                or block.header != last.header
                or block.path != last.path
                or block.offset != last.offset + len(last.data)
            ):
                flush()
        if block.rejected:
            out.append(block)
        else:
            run.append(block)
    flush()
    return out
