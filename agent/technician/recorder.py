"""What ``explain`` needs of a window beyond the alert event: kept by a thin wrapper of the policy.

`ExplainingPolicy` wraps a stream's alert policy (`agent.seams.Policy`): every
batch of scored windows passes through it on its way to the policy, so it keeps,
per alert head, the scores of the last ``score_history`` windows (a ring buffer,
numpy, no per-window Python object), and for each event the policy returns it
assembles a context: the head's thresholds and direction, every feature of the
event's window with its value and z-score against the training reference, and the
scores of the windows up to the event's. The daemon takes the contexts
(`take_contexts`) and journals them with their events (`agent.journal`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.alerts import AlertEvent, WindowRef
from agent.contract.manifest import ModelManifest
from agent.policy import explain, head_key
from agent.seams import Policy

FloatArray = npt.NDArray[np.float64]


class _History:
    """The last `size` (window index, window end, score) of one head."""

    __slots__ = ("_data", "_filled", "_next", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._data = np.full((max(1, size), 3), np.nan)
        self._next = 0
        self._filled = 0

    def extend(self, index: FloatArray, end: FloatArray, score: FloatArray) -> None:
        n = len(score)
        if self._size == 0 or n == 0:
            return
        take = min(n, self._size)
        rows = np.column_stack([index[-take:], end[-take:], score[-take:]])
        positions = (self._next + np.arange(take)) % self._size
        self._data[positions] = rows
        self._next = int((self._next + take) % self._size)
        self._filled = min(self._size, self._filled + take)

    def last(self) -> FloatArray:
        """The kept rows, oldest first."""
        if self._filled < self._size:
            return self._data[: self._filled].copy()
        return np.roll(self._data, -self._next, axis=0)


class ExplainingPolicy:
    """A `agent.seams.Policy` that forwards to `inner` and keeps the context of each event."""

    def __init__(self, inner: Any, *, score_history: int) -> None:
        self.inner = inner
        self._size = score_history
        self._histories: dict[str, _History] = {}
        self._contexts: dict[str, dict[str, Any]] = {}

    @property
    def manifest(self) -> ModelManifest:
        """The manifest of the model whose scores are evaluated."""
        manifest: ModelManifest = self.inner.manifest
        return manifest

    def evaluate(
        self, scores: Any, windows: Sequence[WindowRef], features: FloatArray, *, replayed: bool
    ) -> list[AlertEvent]:
        """The inner policy's events; each one's context is kept for `take_contexts`."""
        policy: Policy = self.inner
        events = policy.evaluate(scores, windows, features, replayed=replayed)
        n = len(windows)
        if n == 0:
            return events
        manifest = self.manifest
        if not events:
            self._remember(manifest, scores, windows, 0, n)
            return events
        # Windows the batch holds, by index, to find each event's row (events come in window order).
        first = windows[0].index
        done = 0
        for event in events:
            row = _row_of(windows, event.window.index, first, done)
            if row is None:
                continue
            self._remember(manifest, scores, windows, done, row + 1)
            done = row + 1
            self._contexts[event.event_id] = self._context(manifest, event, features[row])
        self._remember(manifest, scores, windows, done, n)
        return events

    def take_contexts(self) -> dict[str, dict[str, Any]]:
        """Contexts of the events returned since the last call, by event id."""
        out, self._contexts = self._contexts, {}
        return out

    def state(self) -> dict[str, Any]:
        """The inner policy's state (the history is not persisted: it refills within a minute)."""
        state: dict[str, Any] = self.inner.state()
        return state

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume the inner policy."""
        self.inner.restore(state)

    def use_model(self, manifest: ModelManifest) -> None:
        """The inner policy continues with the new model; heads it lacks lose their history."""
        self.inner.use_model(manifest)
        keys = {head_key(h.component, h.failure_mode) for h in manifest.heads}
        self._histories = {k: h for k, h in self._histories.items() if k in keys}

    def counters(self) -> dict[str, Any]:
        """The inner policy's counters."""
        counters: dict[str, Any] = self.inner.counters()
        return counters

    def __getattr__(self, name: str) -> Any:
        # Anything else (open_alerts, use_config, …) is the inner policy's.
        return getattr(self.inner, name)

    # -- internals ---------------------------------------------------------------------------------

    def _remember(
        self,
        manifest: ModelManifest,
        scores: Mapping[str, Any],
        windows: Sequence[WindowRef],
        start: int,
        stop: int,
    ) -> None:
        """Add the scores of rows [start, stop) to every head's history."""
        if self._size == 0 or stop <= start:
            return
        # Only the last `size` rows can stay: build WindowRefs for those alone.
        start = max(start, stop - self._size)
        refs = [windows[i] for i in range(start, stop)]
        index = np.array([w.index for w in refs], dtype=np.float64)
        end = np.array([w.end for w in refs], dtype=np.float64)
        for head in manifest.heads:
            array = np.asarray(scores[head.output], dtype=np.float64)
            column = array.reshape(-1, 1)[:, 0] if array.ndim == 1 else array[:, head.column]
            key = head_key(head.component, head.failure_mode)
            history = self._histories.get(key)
            if history is None:
                history = self._histories[key] = _History(self._size)
            history.extend(index, end, column[start:stop])

    def _context(self, manifest: ModelManifest, event: AlertEvent, row: FloatArray) -> dict[str, Any]:
        head = next(
            (
                h
                for h in manifest.heads
                if (h.component, h.failure_mode) == (event.component, event.failure_mode)
            ),
            None,
        )
        features = explain(manifest, np.asarray(row, dtype=np.float64), len(manifest.feature_names))
        mean = manifest.explanation_reference.mean  # what explain's z-scores compare with
        std = manifest.explanation_reference.std
        position = {name: i for i, name in enumerate(manifest.feature_names)}
        history = self._histories.get(head_key(event.component, event.failure_mode))
        context: dict[str, Any] = {
            "model_label": manifest.label,
            "features": [
                {
                    "name": f.name,
                    "value": f.value,
                    "z": f.z,
                    "mean": mean[position[f.name]],
                    "std": std[position[f.name]],
                }
                for f in features
            ],
            "scores": []
            if history is None
            else [[int(i), float(e), _finite(s)] for i, e, s in history.last().tolist()],
        }
        if head is not None:
            context["direction"] = head.direction
            context["meaning"] = head.meaning
            context["thresholds"] = {
                "warning": head.thresholds.warning,
                "critical": head.thresholds.critical,
                "clear": head.thresholds.clear,
            }
        return context


def _row_of(windows: Sequence[WindowRef], index: int, first: int, start: int) -> int | None:
    """The row of the window with this index (windows are consecutive; checked, else searched)."""
    guess = index - first
    if start <= guess < len(windows) and windows[guess].index == index:
        return guess
    return next((i for i in range(start, len(windows)) if windows[i].index == index), None)


def _finite(value: float) -> float | None:
    """JSON has no NaN: a non-finite score is kept as null."""
    return value if np.isfinite(value) else None
