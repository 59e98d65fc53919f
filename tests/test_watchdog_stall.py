"""The systemd watchdog is fed by the pipeline loop itself: a stalled loop stops the pings.

The daemon runs in a thread against a real AF_UNIX datagram socket standing in for
systemd's notify socket (WATCHDOG_USEC=400000, so a ping is due every 0.2 s). One
stream's follower is made to block inside ``read`` — the loop thread is then stuck
mid-tick, as it would be on a hung disk or a wedged parser — and no ``WATCHDOG=1``
may arrive until it is released; then the pings resume and the lines written
meanwhile are scored.
"""

from __future__ import annotations

import functools
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import AgentConfig, ModelConfig
from agent.daemon import AgentDaemon
from agent.ingest import StreamFollower
from agent.ingest.reader import LineBlock
from agent.sdnotify import Notifier
from agent.testing import InMemoryTransport
from tests.test_daemon import make_config

WATCHDOG_USEC = 400_000
PING_INTERVAL_S = WATCHDOG_USEC / 2e6  # the daemon pings at half the timeout
HEADER = "ts,J1,T1\n"


def _config(root: Path) -> AgentConfig:
    """The daemon tests' agent, its model store checked once a second."""
    config = make_config(root)
    model = ModelConfig(directory=root / "store", bundled=root / "bundled", check_interval_s=1.0)
    return config.model_copy(update={"model": model})


def _append(config: AgentConfig, first_ts: int, n: int) -> None:
    path = config.streams[0].directory / "arm1.csv"
    new = not path.exists()
    with path.open("a") as handle:
        if new:
            handle.write(HEADER)
        handle.write("".join(f"{first_ts + i}.0,0.1,40.0\n" for i in range(n)))


class FakeSystemd:
    """The notify socket: a reader thread records every datagram with its arrival time, as systemd would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.02)
        self._lock = threading.Lock()
        self._received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="fake-systemd")
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self._received.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._stop.set()
        self._thread.join(5.0)
        self._sock.close()

    def arrivals(self, line: str, since: float, until: float = float("inf")) -> list[float]:
        """Arrival times of datagrams holding `line` in (since, until]."""
        with self._lock:
            return [at for at, text in self._received if since < at <= until and line in text.splitlines()]

    def wait_for(self, line: str, *, since: float, timeout_s: float) -> float | None:
        """The arrival time of the first datagram holding `line` after `since`, or None by the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.arrivals(line, since)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)

    def pings(self, since: float, until: float = float("inf")) -> list[float]:
        """Arrival times of WATCHDOG=1 datagrams in (since, until]."""
        return self.arrivals("WATCHDOG=1", since, until)


@pytest.fixture(name="systemd")
def _systemd() -> Iterator[FakeSystemd]:
    # A short directory of our own: AF_UNIX paths are capped at 108 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="wd-") as short:
        fake = FakeSystemd(Path(short) / "notify")
        try:
            yield fake
        finally:
            fake.close()


class StallableRead:
    """Replaces `StreamFollower.read` so the test can make the next call block until released."""

    def __init__(self) -> None:
        self._read = StreamFollower.read
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, follower: StreamFollower, max_bytes: int) -> list[LineBlock]:
        if self.armed.is_set():
            self.armed.clear()
            self.entered.set()
            self.release.wait(30.0)  # bounded, so a failing test cannot hang the suite
        return self._read(follower, max_bytes)

    def __get__(self, follower: StreamFollower, owner: type) -> Callable[[int], list[LineBlock]]:
        return functools.partial(self, follower)


@dataclass
class Running:
    daemon: AgentDaemon
    stall: StallableRead
    config: AgentConfig


@pytest.fixture(name="running")
def _running(tmp_path: Path, systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    """`AgentDaemon.run` in a thread, its follower's reads stallable, pinging the fake systemd."""
    config = _config(tmp_path)
    stall = StallableRead()
    monkeypatch.setattr(StreamFollower, "read", stall)
    notifier = Notifier(str(systemd.path), watchdog_usec=WATCHDOG_USEC)
    daemon = AgentDaemon(config, transport=InMemoryTransport(), notifier=notifier)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), name="agent-run")
    started = time.monotonic()
    thread.start()
    try:
        assert systemd.wait_for("READY=1", since=started, timeout_s=10.0) is not None, "no READY=1"
        yield Running(daemon, stall, config)
    finally:
        stall.release.set()
        stop.set()
        thread.join(10.0)
        notifier.close()
    assert not thread.is_alive(), "the agent loop did not stop"


class TestWatchdogFollowsTheLoop:
    def test_a_turning_loop_pings_the_watchdog_about_every_half_timeout(
        self, running: Running, systemd: FakeSystemd
    ) -> None:
        """After READY=1, WATCHDOG=1 keeps coming while lines are read and while the logs are idle."""
        begin = time.monotonic()
        _append(running.config, 0, 100)
        time.sleep(10 * PING_INTERVAL_S)
        pings = systemd.pings(begin, time.monotonic())
        assert len(pings) >= 5, f"only {len(pings)} pings in {10 * PING_INTERVAL_S:.1f} s"
        assert 100 == running.daemon.streams[0].counters.lines

    def test_a_stalled_loop_stops_feeding_the_watchdog_and_resumes_when_released(
        self, running: Running, systemd: FakeSystemd
    ) -> None:
        """While a follower read hangs no WATCHDOG=1 is sent for several timeouts; after it, pings resume."""
        begin = time.monotonic()
        assert systemd.wait_for("WATCHDOG=1", since=begin, timeout_s=5.0) is not None, (
            "no ping before the stall"
        )

        running.stall.armed.set()
        assert running.stall.entered.wait(5.0), "the loop never reached the follower"
        # A ping the tick before the stuck one sent may still be on its way to the reader: not "during".
        time.sleep(PING_INTERVAL_S / 2)
        stalled_at = time.monotonic()
        _append(running.config, 0, 200)  # lines arrive while the loop is stuck
        time.sleep(3 * WATCHDOG_USEC / 1e6)  # three whole watchdog timeouts: systemd would have killed us
        stall_end = time.monotonic()
        during = systemd.pings(stalled_at, stall_end)
        lines_during = running.daemon.streams[0].counters.lines
        running.stall.release.set()

        resumed = systemd.wait_for("WATCHDOG=1", since=stall_end, timeout_s=5.0)
        assert [] == during, f"{len(during)} pings while the loop was stuck"
        assert 0 == lines_during
        assert resumed is not None, "the pings did not resume after the stall"
        deadline = time.monotonic() + 5.0
        while running.daemon.streams[0].counters.lines < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 200 == running.daemon.streams[0].counters.lines, (
            "lines written during the stall were not scored"
        )
        time.sleep(max(0.0, resumed + 6 * PING_INTERVAL_S - time.monotonic()))
        after = systemd.pings(resumed, time.monotonic())
        assert len(after) >= 3, f"only {len(after)} pings in the {6 * PING_INTERVAL_S:.1f} s after the stall"
