"""Shared fixtures: a real Mosquitto broker per test, and hygiene checks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

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
