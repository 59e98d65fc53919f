"""Driving an in-process `AgentDaemon` until its first stream has judged a number of lines."""

from __future__ import annotations

import json
from typing import Any

from agent.daemon import AgentDaemon
from agent.streams.pipeline import StreamCounters
from agent.testing import InMemoryTransport, ManualClock


def tick_until_judged(daemon: AgentDaemon, clock: ManualClock, lines: int) -> None:
    """Tick until the first stream accepted or refused `lines` lines (a bound on ticks, not on time)."""
    counters = daemon.streams[0].counters
    for _ in range(500):
        if counters.lines + counters.quarantined >= lines:
            return
        daemon.tick(0.0)
        clock.advance(0.5)
    raise AssertionError(f"judged {counters.lines + counters.quarantined} of {lines} lines")


def judge_and_stop(
    daemon: AgentDaemon, transport: InMemoryTransport, clock: ManualClock, lines: int
) -> tuple[StreamCounters, list[dict[str, Any]]]:
    """Tick until `lines` lines are judged, then shut down: the first stream's counters and alerts sent."""
    tick_until_judged(daemon, clock, lines)
    counters = daemon.streams[0].counters
    daemon.shutdown()
    return counters, [json.loads(m.payload) for m in transport.messages("alert")]
