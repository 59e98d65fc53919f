"""Ground truth per sample and the record of a refused row: what extraction and labelling share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
StrArray = npt.NDArray[np.str_]
BoolArray = npt.NDArray[np.bool_]

HEALTHY = "healthy"
"""The mode of a sample with no fault coming."""


@dataclass(frozen=True, slots=True)
class Truth:
    """Ground truth per sample, aligned with a `RobotSeries`."""

    mode: StrArray
    component: StrArray
    health: FloatArray
    failure: BoolArray
    """The sample at which a failure happened (a failure event's onset)."""
    rul_s: FloatArray
    """Seconds to the next failure; +inf when none is coming."""
    excluded: BoolArray | None = None
    """Samples during a failure (the robot stopped): windows ending on them are left out."""


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    """A row that was not used, with where it was and why."""

    source: str
    line: int
    offset: int
    reason: str
    detail: str = ""
