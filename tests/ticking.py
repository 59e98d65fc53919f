"""Driving an in-process `AgentDaemon` until its first stream has judged a number of lines."""

from __future__ import annotations

from agent.daemon import AgentDaemon
from agent.testing import ManualClock


def tick_until_judged(daemon: AgentDaemon, clock: ManualClock, lines: int) -> None:
    """Tick until the first stream accepted or refused `lines` lines (a bound on ticks, not on time)."""
    counters = daemon.streams[0].counters
    for _ in range(500):
        if counters.lines + counters.quarantined >= lines:
            return
        daemon.tick(0.0)
        clock.advance(0.5)
    raise AssertionError(f"judged {counters.lines + counters.quarantined} of {lines} lines")
