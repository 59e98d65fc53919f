"""Feature drift against the training reference, as a coarse state for heartbeats.

Each stream keeps an exponentially weighted mean of every feature. A feature
whose mean has moved more than ``z_threshold`` training standard deviations from
the training mean is drifting; the stream's state is ``drifting`` when at least
``min_fraction`` of its features are, ``ok`` otherwise, and ``unknown`` until
``warmup`` windows were seen. It says "the data no longer looks like what the
model was trained on", which an operator reads as "retrain or check the sensors".
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.contract.manifest import ModelManifest

DriftState = Literal["unknown", "ok", "drifting"]

FloatArray = npt.NDArray[np.float64]


class DriftMonitor:
    """Tracks one stream's features against one model's training reference."""

    __slots__ = ("_alpha", "_ewma", "_mean", "_min_fraction", "_seen", "_std", "_warmup", "_z")

    def __init__(
        self,
        manifest: ModelManifest,
        *,
        half_life_windows: float = 200.0,
        z_threshold: float = 3.0,
        min_fraction: float = 0.1,
        warmup: int = 50,
    ) -> None:
        self._mean = np.asarray(manifest.reference.mean, dtype=np.float64)
        std = np.asarray(manifest.reference.std, dtype=np.float64)
        self._std = np.where(std > 1e-12, std, 1.0)
        self._alpha = 1.0 - 0.5 ** (1.0 / half_life_windows)
        self._z = z_threshold
        self._min_fraction = min_fraction
        self._warmup = warmup
        self._ewma: FloatArray | None = None
        self._seen = 0

    def update(self, features: FloatArray) -> None:
        """Fold a batch of feature vectors (rows in window order) into the running means."""
        finite = features[np.isfinite(features).all(axis=1)]
        if not len(finite):
            return
        start = finite[0] if self._ewma is None else self._ewma
        keep = 1.0 - self._alpha
        n = len(finite)
        # the EWMA recursion e <- e + alpha (x - e), unrolled over the batch in one product
        weights = self._alpha * keep ** np.arange(n - 1, -1, -1, dtype=np.float64)
        self._ewma = keep**n * start + weights @ finite
        self._seen += n

    def z_scores(self) -> FloatArray | None:
        """Per-feature distance of the running mean from the training mean, in training stds."""
        if self._ewma is None:
            return None
        return np.abs(self._ewma - self._mean) / self._std

    @property
    def state(self) -> DriftState:
        """``unknown`` during warm-up, then ``drifting`` or ``ok``."""
        z = self.z_scores()
        if z is None or self._seen < self._warmup:
            return "unknown"
        return "drifting" if float(np.mean(z > self._z)) >= self._min_fraction else "ok"

    def snapshot(self) -> dict[str, Any]:
        """State, windows seen and the most drifted features' indices and z-scores."""
        z = self.z_scores()
        top = [] if z is None else [(int(i), round(float(z[i]), 2)) for i in np.argsort(-z)[:5]]
        return {"state": self.state, "windows": self._seen, "top": top}
