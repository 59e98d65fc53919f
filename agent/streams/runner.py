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
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import structlog

from agent.config import IngestConfig
from agent.contract.alerts import AlertEvent
from agent.ingest import LineBlock, StreamFollower
from agent.streams.pipeline import StreamPipeline

log = structlog.get_logger("robotpm.agent")

HeldRead = tuple[list[LineBlock], bool]
"""Blocks read together, with their ``replayed`` flag (read before the stream first caught up)."""


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

    @property
    def name(self) -> str:
        """The stream's name."""
        return self.pipeline.name

    def restore(self, saved: dict[str, Any] | None) -> None:
        """Resume follower and pipeline from the state committed last (None: a fresh stream)."""
        self.follower.restore(saved.get("follower") if saved else None)
        if saved and self.follower.counters["state_discarded"]:
            # The follower reads every file from its start again: an open window restored
            # from the same row would be continued with lines it already holds.
            log.warning("stream_state_discarded", stream=self.name, reason="damaged follower state")
            saved = None
        self.pipeline.restore(saved.get("pipeline") if saved else None)
        self.position = self.follower.state()

    def start(self) -> None:
        """Start watching the stream's files."""
        self.follower.start()

    def close(self) -> None:
        """Stop watching and close the files."""
        self.follower.close()

    def hold_deadline(self) -> float | None:
        """When (monotonic) the reads held now must be processed at the latest; None: nothing held."""
        return self._held_since + self._ingest.max_hold_s if self._held else None

    def step(self, now: float) -> list[AlertEvent]:
        """Read what is new, hold it or process it; returns the alert events it caused."""
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
            events = self.flush()
        if self._ingest.max_hold_s > 0:
            self._gate_wakeups()
        return events

    def flush(self) -> list[AlertEvent]:
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
        return {"pipeline": self.pipeline.state(), "follower": self.position}

    def saved(self) -> None:
        """The state from `state` was committed."""
        self.unsaved = False

    def _hold(self, blocks: list[LineBlock], replayed: bool, size: int, now: float) -> None:
        if not self._held:
            self._held_since = now
        self._held.append((blocks, replayed))
        self._held_lines += sum(b.data.count(b"\n") for b in blocks)
        self._held_bytes += size

    def _release(self) -> list[HeldRead]:
        """The held reads, with runs of adjacent blocks of one file joined (one parse, not one per read)."""
        held, self._held = self._held, []
        self._held_lines = self._held_bytes = 0
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
