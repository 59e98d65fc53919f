"""Waits between retries that never give up: capped exponential back-off with jitter.

The n-th wait is ``min(max_s, first_s * 2**(n-1))`` times a random factor in
``[1 - jitter, 1]``, so a fleet that failed together (a web-server outage during a rollout)
does not come back together, and after a long outage every robot still tries about once
per ``max_s`` (an hour by default): it converges soon after the server does.
"""

from __future__ import annotations

import random


class Backoff:
    """The waits of one retry sequence; see the module docstring."""

    __slots__ = ("_first_s", "_jitter", "_max_s", "_random")

    def __init__(
        self, first_s: float, max_s: float, *, jitter: float = 0.5, rng: random.Random | None = None
    ) -> None:
        if not 0 < first_s <= max_s or not 0 <= jitter < 1:
            raise ValueError(
                f"need 0 < first_s ({first_s}) <= max_s ({max_s}) and 0 <= jitter ({jitter}) < 1"
            )
        self._first_s = first_s
        self._max_s = max_s
        self._jitter = jitter
        self._random = rng or random.Random()

    def __repr__(self) -> str:
        return f"Backoff(first_s={self._first_s}, max_s={self._max_s}, jitter={self._jitter})"

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1, 2, …); never more than ``max_s``."""
        exponent = min(max(failures, 1) - 1, 64)
        base = min(self._max_s, self._first_s * 2.0**exponent)
        return base * (1.0 - self._jitter * self._random.random())
