"""A stream's clock: which record times are accepted, and when the clock re-bases.

Time in a log is data, not authority: one line dated year 3000 (or 1970) must not become
the stream's newest time, or every later good line would look as if it went backwards.
The rule, shared by the agent's pipeline and the trainer's extraction:

* a time at most ``backwards_tolerance_s`` before the newest accepted one, and at most
  ``jump_s`` after it, is accepted (the newest time moves on to it);
* a time further back, but by at most ``jump_s``, is refused as ``time_backwards``;
* a time more than ``jump_s`` away from the newest, either way, is refused as
  ``time_outlier`` and does not move the clock;
* ``rebase_lines`` consecutive outliers that agree with each other (each within the same
  bounds of the one before) are a genuine clock step (an RTC reset, a clock set by hand,
  NTP after a boot in 1970): from the last of them on the clock follows the new time.
  The ones before it stay refused, so a step costs ``rebase_lines - 1`` lines;
* a stream that counts controller **uptime** instead of wall-clock time restarts at zero on
  a reboot: there a step back beyond the tolerance starts a new epoch, whose uptime ``u``
  becomes ``end + u``, ``end`` being the newest time of the epochs before. Times of an
  uptime stream are therefore seconds counted across reboots, never ``time_backwards``.

The first line of a stream sets the clock. If that line is itself an outlier, the good
lines after it re-base the clock after ``rebase_lines`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

DEFAULT_TOLERANCE_S = 1.0
"""How far a time may go back before it is refused (``ingest.backwards_tolerance_s``)."""
DEFAULT_JUMP_S = 30 * 86400.0
"""A time more than this far from the stream's newest (30 days) is an outlier."""
DEFAULT_REBASE_LINES = 5
"""Consecutive agreeing outliers that re-base the clock."""


@dataclass(frozen=True, slots=True)
class TimeRule:
    """The bounds a stream's clock applies (see the module)."""

    backwards_tolerance_s: float = DEFAULT_TOLERANCE_S
    jump_s: float = DEFAULT_JUMP_S
    rebase_lines: int = DEFAULT_REBASE_LINES
    uptime: bool = False

    def __post_init__(self) -> None:
        if not self.backwards_tolerance_s >= 0:
            raise ValueError("backwards_tolerance_s must be >= 0")
        if not self.jump_s > self.backwards_tolerance_s:
            raise ValueError("jump_s must be larger than backwards_tolerance_s")
        if self.rebase_lines < 1:
            raise ValueError("rebase_lines must be >= 1")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `StreamClock.judge` found: the stream's times and, per row, a refusal or None."""

    times: FloatArray
    """The times as the stream counts them (uptime streams: with their epoch offset)."""
    refused: npt.NDArray[np.bool_]
    """Per row, whether the clock refused its time."""
    reasons: dict[int, tuple[str, str]]
    """Refused row → (``time_backwards`` or ``time_outlier``, a human-readable detail)."""


class StreamClock:
    """The newest accepted time of one stream, judged by a `TimeRule`; saved and restored with it."""

    __slots__ = ("_offset", "_pending", "_rule", "newest")

    def __init__(self, rule: TimeRule | None = None, newest: float | None = None) -> None:
        self._rule = rule or TimeRule()
        self.newest: float | None = newest
        """The newest accepted time (uptime streams: with the epoch offset), None before the first."""
        self._offset = 0.0
        self._pending: list[float] = []

    @property
    def rule(self) -> TimeRule:
        """The rule this clock applies."""
        return self._rule

    def judge(self, times: FloatArray, skip: npt.NDArray[np.bool_]) -> Verdict:
        """Judge `times` in order (rows in `skip` are refused already and ignored); the clock moves on."""
        out = times + self._offset if self._rule.uptime and self._offset else times
        verdict = Verdict(out, np.zeros(len(times), dtype=bool), {})
        if not len(times):
            return verdict
        if not skip.any() and self._all_in_bounds(out):
            self.newest = float(out.max()) if self.newest is None else max(self.newest, float(out.max()))
            self._pending.clear()
            return verdict
        out = verdict.times.copy()
        verdict = Verdict(out, verdict.refused, {})
        for i in range(len(times)):
            if skip[i]:
                continue
            raw = float(times[i])
            before = self.newest
            reason = self._one(raw)
            if reason is None:
                out[i] = raw + self._offset
            else:
                verdict.refused[i] = True
                verdict.reasons[i] = (reason, self._detail(reason, raw + self._offset, before))
        return verdict

    def _all_in_bounds(self, times: FloatArray) -> bool:
        """Whether every time is accepted with no refusal (the common case, vectorised)."""
        rule = self._rule
        running = np.maximum.accumulate(times)
        if self.newest is not None:
            running = np.maximum(running, self.newest)
            previous = np.concatenate(([self.newest], running[:-1]))
        else:
            previous = np.concatenate(([times[0]], running[:-1]))
        steps = times - previous
        return bool(((steps >= -rule.backwards_tolerance_s) & (steps <= rule.jump_s)).all())

    def _one(self, raw: float) -> str | None:
        rule = self._rule
        ts = raw + self._offset
        newest = self.newest
        if newest is None or newest - rule.backwards_tolerance_s <= ts <= newest + rule.jump_s:
            self._accept(ts)
            return None
        if rule.uptime and ts < newest - rule.backwards_tolerance_s:
            self._offset = newest  # a reboot: the new epoch's uptime counts on from the newest time
            self._accept(raw + self._offset)
            return None
        if ts < newest and newest - ts <= rule.jump_s:
            self._pending.clear()
            return "time_backwards"
        pending = self._pending
        if pending and not (pending[-1] - rule.backwards_tolerance_s <= ts <= pending[-1] + rule.jump_s):
            pending.clear()
        pending.append(ts)
        if len(pending) >= rule.rebase_lines:
            self.newest = None
            self._accept(ts)
            return None
        return "time_outlier"

    def _accept(self, ts: float) -> None:
        self.newest = ts if self.newest is None else max(self.newest, ts)
        self._pending.clear()

    def _detail(self, reason: str, ts: float, newest: float | None) -> str:
        if reason == "time_outlier":
            return (
                f"timestamp {ts} is more than {self._rule.jump_s:g} s from the stream's time {newest}; "
                f"{self._rule.rebase_lines} such lines in a row re-base the clock"
            )
        return f"timestamp {ts} is before {newest}"

    def state(self) -> dict[str, Any]:
        """What a restart needs (JSON-serialisable)."""
        return {"newest": self.newest, "offset": self._offset, "pending": list(self._pending)}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume from `state` (None: a fresh clock)."""
        state = state or {}
        newest = state.get("newest")
        self.newest = None if newest is None else float(newest)
        self._offset = float(state.get("offset", 0.0))
        self._pending = [float(t) for t in state.get("pending", ())]
