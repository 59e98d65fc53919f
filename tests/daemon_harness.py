"""A daemon driven tick by tick against the in-memory transport and clock, and its pytest fixture.

A test module that wants the ``harness`` fixture imports `harness_fixture` and defines the
``config`` fixture (an `AgentConfig`) the harness runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import closing

import pytest

from agent.config import AgentConfig
from agent.daemon import AgentDaemon
from agent.seams import ModelSource
from agent.testing import InMemoryTransport, ManualClock

HEADER = "ts,J1,T1\n"
"""The header of the tiny test model's logs."""


def write(config: AgentConfig, text: str, name: str = "arm1.csv") -> None:
    """Append `text` to the config's first stream's log `name`, starting it with `HEADER` if new."""
    path = config.streams[0].directory / name
    new = not path.exists()
    with path.open("a") as handle:
        if new:
            handle.write(HEADER)
        handle.write(text)


class Harness:
    """Runs a daemon tick by tick against an in-memory transport."""

    def __init__(self, config: AgentConfig, models: ModelSource | None = None) -> None:
        self.config = config
        self.transport = InMemoryTransport()
        self.clock = ManualClock()
        self.daemon = AgentDaemon(config, transport=self.transport, clock=self.clock, models=models)
        self.daemon.startup()

    def settle(self, ticks: int = 30) -> None:
        for _ in range(ticks):
            self.daemon.tick(0.01)
            self.clock.advance(0.05)

    def feed(self, text: str) -> None:
        """Append `text` to the log of the first stream, then `settle`."""
        write(self.config, text)
        self.settle()

    def settle_until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Tick until `condition` holds (the model watcher works on its own thread, in real time)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            self.settle(1)
            time.sleep(0.01)

    def alerts(self) -> list[dict[str, object]]:
        return [json.loads(m.payload) for m in self.transport.messages("alert")]

    def close(self) -> None:
        self.daemon.shutdown()


@pytest.fixture(name="harness")
def harness_fixture(config: AgentConfig) -> Iterator[Harness]:
    """A started `Harness` of the module's ``config`` fixture, shut down after the test."""
    with closing(Harness(config)) as harness:
        yield harness
