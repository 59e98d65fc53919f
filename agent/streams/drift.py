"""Feature drift against the training reference: PSI per feature beside the mean shift.

Each stream keeps running statistics of every feature over its recent windows,
exponentially decayed (half-life ``half_life_windows``), and compares them with the
model's training reference (the manifest's ``reference``):

* **Mean shift**: the running mean's distance from the training mean, in training
  standard deviations: an effect size (Cohen's d against the training spread).
* **PSI** (Population Stability Index) against the training quantile bins
  (``reference.bins``, written by the trainer; manifests without them get the mean
  shift only): with ``a`` the decayed share of recent windows in a bin and ``e`` the
  training share, ``PSI = Σ (a − e) · ln(a / e)``, shares floored at 1e-4. It sees
  changes of shape and spread that leave the mean alone. A small sample inflates it
  by about ``(bins − 1) / n``, so it is judged only once the decayed sample holds
  ``psi_min_windows`` effective windows (Kish: ``(Σw)² / Σw²``).

Per feature, with hysteresis: it starts drifting when its distribution changed
(``PSI >= psi_raise``) **and** by a size that matters (``|shift| >= shift_raise``,
the effect-size threshold), and stops once either is back (``PSI < psi_clear`` or
``|shift| < shift_clear``). Without PSI (no bins, or too small a sample yet) the
shift alone decides. Both halves are needed on a robot: one robot's windows fill a
narrow slice of a fleet's training distribution, so its PSI against the fleet's
bins is large even when healthy (a simulated healthy robot scores PSI ≈ 8 against
bins of twelve others), while its mean stays within the fleet's spread (|shift|
under 1.5 against the bundled model's reference); and a few wild windows move a
mean without changing the distribution. The defaults read PSI the usual way (under
0.1 stable, 0.25 and more a significant change) and take two training stds as a
large shift. The stream is ``drifting`` while at least ``min_features`` features
drift, ``ok`` otherwise, and ``unknown`` for its first ``warmup_windows`` windows. Drift says "the
data no longer looks like what the model was trained on", which an operator reads
as "retrain, or check the sensors"; the report names the features. The running
statistics live in memory: a restart or a new model starts them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from agent.config import DriftConfig
from agent.contract.manifest import ModelManifest

DriftState = Literal["unknown", "ok", "drifting"]

FloatArray = npt.NDArray[np.float64]

_SHARE_FLOOR: Final = 1e-4
_STD_FLOOR: Final = 1e-12


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's drift statistics now."""

    index: int
    name: str
    psi: float | None
    """None while the sample is too small, or without reference bins."""
    shift: float
    """(running mean − training mean) / training std."""
    drifting: bool


class DriftMonitor:
    """Tracks one stream's features against one model's training reference."""

    def __init__(self, manifest: ModelManifest, config: DriftConfig | None = None) -> None:
        self._config = config or DriftConfig()
        self._names = manifest.feature_names
        reference = manifest.reference
        self._mean = np.asarray(reference.mean, dtype=np.float64)
        std = np.asarray(reference.std, dtype=np.float64)
        self._std = np.where(std > _STD_FLOOR, std, 1.0)
        self._keep = 0.5 ** (1.0 / self._config.half_life_windows)
        n = len(self._mean)
        self._weight = 0.0
        self._weight_sq = 0.0
        self._sum = np.zeros(n)
        self._seen = 0
        self._drifting = np.zeros(n, dtype=bool)
        self._state: DriftState = "unknown"
        self._changed = False
        bins = reference.bins
        self._has_bins = bins is not None
        if bins is not None:
            widths = [len(e) for e in bins.edges]
            self._edges = np.full((n, max(widths, default=0)), np.inf)
            for f, edges in enumerate(bins.edges):
                self._edges[f, : len(edges)] = edges
            self._offsets = np.concatenate(([0], np.cumsum(np.asarray(widths) + 1)[:-1])).astype(np.intp)
            self._expected = np.clip(
                np.concatenate([np.asarray(f) for f in bins.fractions]), _SHARE_FLOOR, None
            )
            self._counts = np.zeros(len(self._expected))

    @property
    def config(self) -> DriftConfig:
        """The thresholds in force."""
        return self._config

    @property
    def windows(self) -> int:
        """Windows folded in since this monitor started (its model went live)."""
        return self._seen

    @property
    def effective_windows(self) -> float:
        """The decayed sample's effective size, ``(Σw)² / Σw²``."""
        return 0.0 if self._weight_sq == 0 else self._weight**2 / self._weight_sq

    @property
    def state(self) -> DriftState:
        """``unknown`` during warm-up, then ``drifting`` or ``ok``."""
        return self._state

    def take_change(self) -> bool:
        """Whether the state changed since the last call (a drift report is due then)."""
        changed, self._changed = self._changed, False
        return changed

    def update(self, features: FloatArray) -> None:
        """Fold a batch of feature vectors (rows in window order) in, then judge every feature."""
        finite = features[np.isfinite(features).all(axis=1)]
        n = len(finite)
        if not n:
            return
        decay = self._keep**n
        weights = self._keep ** np.arange(n - 1, -1, -1, dtype=np.float64)  # the newest row weighs 1
        self._sum = self._sum * decay + weights @ finite
        self._weight = self._weight * decay + float(weights.sum())
        self._weight_sq = self._weight_sq * decay**2 + float(weights @ weights)
        if self._has_bins:
            index = (finite[:, :, None] >= self._edges[None, :, :]).sum(axis=2) + self._offsets[None, :]
            counted = np.bincount(
                index.ravel(), weights=np.repeat(weights, finite.shape[1]), minlength=len(self._counts)
            )
            self._counts = self._counts * decay + counted
        self._seen += n
        self._judge()

    def shifts(self) -> FloatArray | None:
        """Per-feature (running mean − training mean) / training std; None before any window."""
        if self._weight == 0:
            return None
        return (self._sum / self._weight - self._mean) / self._std

    def psi(self) -> FloatArray | None:
        """Per-feature PSI against the reference bins; None without bins or with too small a sample."""
        if not self._has_bins or self.effective_windows < self._config.psi_min_windows:
            return None
        actual = np.clip(self._counts / self._weight, _SHARE_FLOOR, None)
        terms = (actual - self._expected) * np.log(actual / self._expected)
        return np.asarray(np.add.reduceat(terms, self._offsets), dtype=np.float64)

    def features(self, top: int | None = None) -> list[FeatureDrift]:
        """The `top` (None: all) features, most drifted first: drifting, then by PSI, then by |shift|."""
        shifts = self.shifts()
        if shifts is None:
            return []
        psi = self.psi()
        order = sorted(
            range(len(shifts)),
            key=lambda f: (
                not self._drifting[f],
                -(psi[f] if psi is not None else 0.0),
                -abs(shifts[f]),
                f,
            ),
        )
        return [
            FeatureDrift(
                index=f,
                name=self._names[f],
                psi=None if psi is None else round(float(psi[f]), 6),
                shift=round(float(shifts[f]), 6),
                drifting=bool(self._drifting[f]),
            )
            for f in order[:top]
        ]

    @property
    def drifting_features(self) -> int:
        """How many features drift now."""
        return int(self._drifting.sum())

    def _judge(self) -> None:
        config = self._config
        shifts = self.shifts()
        if shifts is None or self._seen < config.warmup_windows:
            return
        magnitude = np.abs(shifts)
        psi = self.psi()
        raise_now = magnitude >= config.shift_raise
        clear_now = magnitude < config.shift_clear
        if psi is not None:
            raise_now &= psi >= config.psi_raise
            clear_now |= psi < config.psi_clear
        self._drifting = np.where(self._drifting, ~clear_now, raise_now)
        state: DriftState = "drifting" if self.drifting_features >= config.min_features else "ok"
        if state != self._state:
            self._state = state
            self._changed = True
