"""Shared fixtures: a real Mosquitto broker per test, and hygiene checks."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.mosquitto import Broker, require_mosquitto


@pytest.fixture(name="broker")
def _broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto started for this test on a free 127.0.0.1 port; stopped afterwards."""
    require_mosquitto()
    broker = Broker(workdir=tmp_path / "broker").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(name="broker_factory")
def _broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Make and start brokers with extra config (e.g. TLS listeners); all are stopped afterwards."""
    require_mosquitto()
    made: list[Broker] = []

    def make(name: str = "extra", **kwargs: Any) -> Broker:
        broker = Broker(workdir=tmp_path / f"broker-{name}-{len(made)}", **kwargs)
        made.append(broker)
        return broker.start()

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Every test leaves as many threads running as it found (watchdog's habit)."""
    before = {t.ident for t in threading.enumerate()}
    yield
    for _ in range(100):
        leaked = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        if not leaked:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"threads leaked: {[t.name for t in leaked]}")


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """A test that configures logging (an in-process CLI run) leaves no logger bound to its stdout.

    `agent.logs.configure_logging` binds structlog and a root handler to the stdout of the
    moment, and installs exception hooks; pytest closes that stdout after the test.
    """
    hooks = (sys.excepthook, threading.excepthook)
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.reset_defaults()
    sys.excepthook, threading.excepthook = hooks
    logging.getLogger().handlers[:] = handlers
