"""Stopping within a deadline: every step of a shutdown that could block waits on one shared budget.

The daemon's shutdown makes its final commit first, on its own thread; every step
after it that waits for something outside (a thread to end, a download to notice
the stop, the broker to take a farewell) runs on a helper thread of its own and is
waited for only as long as the budget has left. A step still running then is
logged (``stop_step_abandoned``) and left behind: the helper threads are daemon
threads, so the process ends anyway, and what mattered was committed before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("robotpm.agent")


@dataclass(slots=True)
class StopStep:
    """A step running on its helper thread."""

    name: str
    thread: threading.Thread | None = None
    error: BaseException | None = None


class StopBudget:
    """``seconds`` of real time for all the steps of one shutdown."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self._deadline - time.monotonic())

    def start(self, name: str, step: Callable[[], object]) -> StopStep:
        """Begin `step` now on a helper thread; `wait` for it later."""
        handle = StopStep(name)

        def run() -> None:
            try:
                step()
            except BaseException as exc:  # reported by wait(), on the daemon's thread
                handle.error = exc

        handle.thread = threading.Thread(target=run, name=f"robotpm-stop-{name}", daemon=True)
        handle.thread.start()
        return handle

    def wait(self, handle: StopStep, at_most: float | None = None) -> bool:
        """Wait for a started step (at most `at_most` s of the budget); True if it ended in time."""
        assert handle.thread is not None
        timeout = self.left() if at_most is None else min(at_most, self.left())
        handle.thread.join(timeout)
        if handle.thread.is_alive():
            log.warning("stop_step_abandoned", step=handle.name, waited_s=round(timeout, 3))
            return False
        if handle.error is not None:
            log.error(
                "stop_step_failed", step=handle.name, error=f"{type(handle.error).__name__}: {handle.error}"
            )
        return True

    def run(self, name: str, step: Callable[[], object], at_most: float | None = None) -> bool:
        """`start` then `wait`."""
        return self.wait(self.start(name, step), at_most)
