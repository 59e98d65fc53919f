"""Which channels drove an alert's score: the model's own answer, computed on the device.

For each raised or updated event, the alerting window's feature vector is copied
once per channel of the feature spec and per healthy replacement, and in those
copies every feature of channel *c* is replaced by the healthy reference
(`ModelManifest.explanation_reference`: the healthy training windows, or all
training windows for an older manifest), in two ways:

* **moved into the healthy range**: to the nearest value inside the reference's
  p01–p99 range, so a feature that already looks healthy stays as it is;
* **set to the healthy mean**.

The copies of every event of a scored batch go through the scorer in **one** call.
A channel's *score drop* is how much better the head's score gets with the channel
made healthy, the better of the two ways (``score - score_without`` for a
higher-is-worse head, the reverse for a lower-is-worse one); the channels with a
positive drop, largest first (ties in spec order), at most `MAX_CONTRIBUTORS`,
become the event's ``contributors``. Without the reference's quantiles the range is
the mean alone and both ways agree.

Why two: a model may compare channels (say, each joint's temperature with the
others', which cancels the ambient). Setting a healthy joint of a robot warmer than
the fleet to the fleet's mean is then a change of its own, and names that joint;
moving it into the healthy range leaves it alone. But a faulty channel still inside
the fleet's range (a cold robot's overheating joint) is moved only by the mean. On
the simulator's joint faults with the bundled model, the range alone named the
faulty joint first in 89% of 140 raise and update events, the mean alone in 88%,
the better of both in 94%.

Unlike a z-score, which says what is unusual, this says what the model responds
to: a channel the model ignores changes no score, however unusual it is. It
replaces one channel at a time, so two channels that each suffice to keep the
score up (redundant evidence) both show small drops; the z-scores beside it still
show what is unusual.

Attribution never costs an event: if the batched call raises, the events go out
as the policy made them; a channel whose replaced score is not finite is left out.
Both are counted in `failures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import structlog

from agent.contract.alerts import AlertEvent, ChannelContribution
from agent.contract.manifest import AlertHead, ModelManifest
from agent.seams import Scorer

log = structlog.get_logger("robotpm.pipeline")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MAX_CONTRIBUTORS: Final = 5
"""At most this many channels are named per event."""
_DIGITS: Final = 6


class ChannelAttribution:
    """Adds the model's channel attribution to raised and updated events of one model."""

    def __init__(self, manifest: ModelManifest) -> None:
        spec = manifest.feature_spec
        self._manifest = manifest
        self._channels = spec.channels
        per_channel = len(spec.statistics)
        # masks[c, j]: feature j belongs to channel c (features are channel-major)
        self._masks = np.kron(np.eye(len(spec.channels), dtype=bool), np.ones((1, per_channel), dtype=bool))
        reference = manifest.explanation_reference
        mean = np.asarray(reference.mean, dtype=np.float64)
        low, high = reference.quantiles.get("p01"), reference.quantiles.get("p99")
        # the healthy range of each feature (the mean alone without both quantiles)
        self._mean = mean
        self._low = (
            mean if low is None or high is None else np.minimum(np.asarray(low, dtype=np.float64), mean)
        )
        self._high = (
            mean if low is None or high is None else np.maximum(np.asarray(high, dtype=np.float64), mean)
        )
        self._heads: dict[tuple[str, str], AlertHead] = {
            (h.component, h.failure_mode): h for h in manifest.heads
        }
        self.failures = 0
        """Batches whose scoring raised, plus events with a non-finite replaced score."""

    def explain(
        self, events: Sequence[AlertEvent], features: FloatArray, index: IntArray, scorer: Scorer
    ) -> list[AlertEvent]:
        """`events` with ``contributors`` added to those of this model that raise or update.

        ``features`` are the scored windows' vectors and ``index`` their window numbers
        (ascending), as the pipeline scored them with `scorer`.
        """
        manifest = self._manifest
        wanted: list[tuple[int, int, AlertHead]] = []  # (event position, feature row, head)
        for position, event in enumerate(events):
            head = self._heads.get((event.component, event.failure_mode))
            if (
                head is None
                or event.state == "cleared"
                or (event.model.id, event.model.version) != (manifest.model_id, manifest.version)
            ):
                continue
            row = int(np.searchsorted(index, event.window.index))
            if row < len(index) and index[row] == event.window.index:
                wanted.append((position, row, head))
        if not wanted:
            return list(events)
        n_channels, n_features = self._masks.shape
        rows = np.asarray(features, dtype=np.float64)[[row for _, row, _ in wanted]]
        healthy = np.stack(  # (events, 2, features): into the range (NaN stays NaN), the mean
            [np.clip(rows, self._low, self._high), np.broadcast_to(self._mean, rows.shape)], axis=1
        )
        # batch[e, way, c]: event e's window with channel c made healthy the `way` way
        batch = np.where(self._masks[None, None], healthy[:, :, None, :], rows[:, None, None, :])
        try:
            outputs = scorer.score(batch.reshape(-1, n_features))
            without = [
                np.asarray(outputs[head.output], dtype=np.float64).reshape(len(wanted), 2, n_channels, -1)[
                    i, :, :, head.column
                ]
                for i, (_, _, head) in enumerate(wanted)
            ]
        except Exception as exc:  # a scorer failure must not cost the alert: it goes out unexplained
            self.failures += 1
            log.warning("attribution_failed", model=manifest.label, error=str(exc))
            return list(events)
        out = list(events)
        for (position, _, head), scores in zip(wanted, without, strict=True):
            event = out[position]
            out[position] = event.model_copy(update={"contributors": self._rank(head, event.score, scores)})
        return out

    def _rank(self, head: AlertHead, score: float, ways: FloatArray) -> tuple[ChannelContribution, ...]:
        """The contributors, from the scores ``ways[way, channel]`` with each channel made healthy."""
        if not np.isfinite(ways).all():
            self.failures += 1
        ways = np.where(np.isfinite(ways), ways, np.nan)
        with np.errstate(invalid="ignore"):  # a channel whose two ways are both NaN stays NaN
            if head.direction == "higher_is_worse":
                without = np.fmin(ways[0], ways[1])
                drops = score - without
            else:
                without = np.fmax(ways[0], ways[1])
                drops = without - score
        usable = np.flatnonzero(np.isfinite(drops) & (drops > 0))
        order = usable[np.argsort(-drops[usable], kind="stable")][:MAX_CONTRIBUTORS]
        return tuple(
            ChannelContribution(
                channel=self._channels[int(c)],
                score_drop=round(float(drops[c]), _DIGITS),
                score_without=round(float(without[c]), _DIGITS),
            )
            for c in order
        )
