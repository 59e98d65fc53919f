"""A fixed linear projection in front of the estimator, exported as one ONNX MatMul.

The agent feeds the contract's features (`agent.contract.features`); a model may
re-express them linearly before its trees. `contrast_matrix` keeps every feature
except absolute temperatures, and adds each joint's temperature statistic minus
the mean over all joints (which cancels the ambient temperature, the same for
every joint) and each joint current's ``mean - min`` and ``max - mean`` (ripple and
noise around the motion profile). Of the gripper current it keeps only the peak
(the closing inrush, the same on every gripper) and drops the levels set by each
gripper's own hold current. A model trained on a few robots then generalises to
robots whose ambient, motor or gripper constants differ.

The projection lives inside the ONNX graph, so the feature contract is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, TransformerMixin

FloatArray = npt.NDArray[np.float64]

_TEMP = re.compile(r"^j\d+_temp$")
_CURRENT = re.compile(r"^j\d+_current$")
_TOOL = "tool_current"


def contrast_matrix(feature_names: Sequence[str]) -> tuple[FloatArray, tuple[str, ...]]:
    """The projection matrix (n_features, n_projected) and the projected features' names."""
    index = {name: i for i, name in enumerate(feature_names)}
    parsed = [name.split("__", 1) for name in feature_names]
    columns: list[FloatArray] = []
    names: list[str] = []

    def add(weights: dict[str, float], name: str) -> None:
        column = np.zeros(len(feature_names))
        for feature, weight in weights.items():
            column[index[feature]] += weight
        columns.append(column)
        names.append(name)

    temps = sorted({channel for channel, _ in parsed if _TEMP.match(channel)})
    for name, (channel, stat) in zip(feature_names, parsed, strict=True):
        if len(temps) >= 2 and channel in temps:
            continue
        if channel == _TOOL and stat != "max" and f"{_TOOL}__max" in index:
            continue
        add({name: 1.0}, name)
    if len(temps) >= 2:
        for stat in ("mean", "min", "max", "last"):
            group = [f"{c}__{stat}" for c in temps if f"{c}__{stat}" in index]
            if len(group) != len(temps):
                continue
            for feature in group:
                weights = {g: -1.0 / len(group) for g in group}
                weights[feature] += 1.0
                add(weights, f"{feature}-joints")
        for channel in temps:
            if f"{channel}__std" in index:
                add({f"{channel}__std": 1.0}, f"{channel}__std")
    for channel in sorted({c for c, _ in parsed if _CURRENT.match(c) and c != _TOOL}):
        mean, low, high = f"{channel}__mean", f"{channel}__min", f"{channel}__max"
        if mean in index and low in index:
            add({mean: 1.0, low: -1.0}, f"{channel}__mean-min")
        if mean in index and high in index:
            add({high: 1.0, mean: -1.0}, f"{channel}__max-mean")
    return np.stack(columns, axis=1), tuple(names)


class LinearProjection(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """scikit-learn transformer ``X → X @ matrix`` (float32), fixed at construction."""

    def __init__(self, matrix: FloatArray | None = None) -> None:
        self.matrix = matrix

    def fit(self, features: Any, target: Any = None) -> LinearProjection:
        """Nothing to learn; checks the width."""
        if self.matrix is None or np.asarray(features).shape[1] != self.matrix.shape[0]:
            raise ValueError("projection matrix does not match the feature count")
        self.n_features_in_ = self.matrix.shape[0]
        return self

    def transform(self, features: Any) -> npt.NDArray[np.float32]:
        """Project float32-cast features."""
        assert self.matrix is not None
        return np.asarray(features, dtype=np.float32) @ self.matrix.astype(np.float32)


_registered = False


def register_converter() -> None:
    """Teach skl2onnx to export `LinearProjection` as a MatMul with a float32 initializer."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.algebra.onnx_ops import OnnxMatMul
    from skl2onnx.common.data_types import FloatTensorType

    def shape(operator: Any) -> None:
        rows = operator.inputs[0].get_first_dimension()
        operator.outputs[0].type = FloatTensorType([rows, operator.raw_operator.matrix.shape[1]])

    def convert(scope: Any, operator: Any, container: Any) -> None:
        matrix = operator.raw_operator.matrix.astype(np.float32)
        node = OnnxMatMul(
            operator.inputs[0],
            matrix,
            op_version=container.target_opset,
            output_names=[operator.outputs[0].full_name],
        )
        node.add_to(scope, container)

    update_registered_converter(LinearProjection, "RobotPMLinearProjection", shape, convert)
    _registered = True
