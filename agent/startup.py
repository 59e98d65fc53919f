"""What a start builds before the loop runs: the state store it may wait for, and the stream runners.

* `open_state_store`: the state store and its outbox. A full disk is waited out
  (systemd is told the start is still going, ``health.json`` says ``waiting``, a
  stop ends the wait with `agent.errors.StartAbandoned`); a damaged file is moved
  aside by `agent.state.open_state` and named as a standing fault.
* `stream_runners`: each stream's follower, pipeline and alert policy, wired
  together as a `agent.streams.runner.StreamRunner` and put back where its last
  commit left it, unless the crash guard says the last start died in it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any, Final

import structlog

from agent.config import AgentConfig
from agent.contract.streams import StreamConfig
from agent.crashguard import CrashGuard, stream_component
from agent.errors import StartAbandoned, StateError
from agent.health import Health
from agent.ingest import Quarantine, StreamFollower
from agent.outbox import Outbox
from agent.policy import AlertPolicy
from agent.sdnotify import Notifier
from agent.seams import Clock, Scorer
from agent.state import DiskSpace, StateStore, is_disk_full, open_state
from agent.streams.pipeline import StreamPipeline
from agent.streams.runner import StreamRunner
from agent.technician.operations import FieldOperations

log = structlog.get_logger("robotpm.agent")

QUARANTINE_FILE: Final = "quarantine.jsonl"


def open_state_store(
    config: AgentConfig,
    clock: Clock,
    disk: DiskSpace,
    health: Health,
    notifier: Notifier,
    stop: threading.Event,
) -> tuple[StateStore, Outbox]:
    """The state store and its outbox; waits while the disk is full, moves a damaged file aside."""
    while True:
        store: StateStore | None = None
        try:
            store, moved = open_state(config.state_dir, wall=clock.wall())
            outbox = Outbox(store, config.outbox, clock)
        except StateError as exc:
            if store is not None:
                store.close()
            if not is_disk_full(exc, config.state_dir):
                raise
            wait = disk.failed(clock.monotonic(), exc)
            notifier.extend_timeout(int((wait + 30.0) * 1e6))  # waiting is not failing to start
            health.update("waiting", {"disk": disk.describe()}, clock.wall())
            if stop.wait(wait):
                raise StartAbandoned("stopped while waiting for disk space") from exc
            continue
        disk.recovered(clock.monotonic())
        if moved is not None:
            reason = f"agent.db was damaged; moved aside to {moved.name}, started afresh (streams re-read)"
            log.error("state_damaged_moved_aside", path=str(store.path), moved_to=str(moved))
            health.standing("state", reason)
        return store, outbox


def stream_runners(
    config: AgentConfig,
    scorer: Scorer,
    fieldops: FieldOperations,
    saved: Mapping[str, dict[str, Any] | None],
    *,
    wakeup: threading.Event,
    clock: Clock,
    guard: CrashGuard,
) -> Iterator[StreamRunner]:
    """A runner per configured stream, each yielded once restored from its saved state (`saved`, by name).

    Yielded one by one so that, should a restore fail, those built before it are already the
    caller's to close.
    """
    quarantine = Quarantine(
        config.state_dir / QUARANTINE_FILE, config.ingest.quarantine_max_bytes, clock=clock.wall
    )
    for stream in config.streams:
        runner = stream_runner(stream, config, scorer, fieldops, quarantine, wakeup, clock)
        skip = guard.stream_skip(stream.name, clock.wall())
        if skip is not None:
            runner.skip(clock.monotonic(), *skip)
        else:
            restore = partial(runner.restore, saved[stream.name])
            guard.guarded("loop", stream_component(stream.name), "restoring its position", restore)
        yield runner


def stream_runner(
    stream: StreamConfig,
    config: AgentConfig,
    scorer: Scorer,
    fieldops: FieldOperations,
    quarantine: Quarantine,
    wakeup: threading.Event,
    clock: Clock,
) -> StreamRunner:
    """One stream's runner: its follower, and its pipeline scoring with `scorer` under the field policy."""
    policy = fieldops.wrap(AlertPolicy.for_stream(scorer.manifest, stream, config, clock))
    pipeline = StreamPipeline(stream, config.ingest, scorer, policy, quarantine, drift=config.drift)
    pipeline.on_scored = fieldops.inference.observe
    follower = StreamFollower(stream, config.ingest, wakeup, clock=clock.monotonic)
    return StreamRunner(pipeline, follower, config.ingest, wakeup)
