"""TrainedMLModel: ONNX export with a parity check, and the manifest the agent reads.

The export refuses (`ParityError`, nothing written) when onnxruntime's outputs on
the test features differ from scikit-learn's beyond the configured tolerance.
Only operators of the standard domains are allowed in the graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.features import FeatureSpec
from agent.contract.manifest import (
    AlertHead,
    FeatureReference,
    GoldenVector,
    ModelManifest,
    OnnxInterface,
    ReferenceBins,
    Task,
)
from trainer.config import ParityConfig
from trainer.errors import ExportError, ParityError
from trainer.stages.training import FittedModel

FloatArray = npt.NDArray[np.float64]

INPUT_NAME = "features"
# The ONNX ceiling every export targets, whatever skl2onnx and onnx default to: opset 17 (ai.onnx.ml
# 3) at IR version 8, which the onnxruntime the robots run (pyproject.toml pins 1.20: at most IR 10,
# opset 21) and every release since 1.14 load. Raise it only with that pin, never past it.
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
TARGET_IR_VERSION = 8
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


@dataclass(frozen=True, slots=True)
class ExportedModel:
    """ONNX bytes with the output names and the parity measured on the test set."""

    onnx_bytes: bytes
    outputs: tuple[str, ...]
    score_output: str
    max_abs_diff: float
    mismatch_fraction: float

    @property
    def sha256(self) -> str:
        """Hex digest of the ONNX bytes."""
        return hashlib.sha256(self.onnx_bytes).hexdigest()


def to_onnx(fitted: FittedModel) -> bytes:
    """The skl2onnx graph of a fitted estimator (float32 input named `INPUT_NAME`, no ZipMap)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    if fitted.task == "anomaly":
        from trainer.stages.compact_isoforest import isolation_forest_onnx

        return isolation_forest_onnx(fitted.estimator, fitted.n_features, INPUT_NAME)
    from trainer.stages.projection import register_converter

    register_converter()
    estimator = fitted.estimator
    options: dict[int, dict[str, Any]] = {}
    if fitted.task == "classifier":
        options[id(estimator)] = {"zipmap": False}
        last = getattr(estimator, "steps", None)
        if last:
            options = {id(last[-1][1]): {"zipmap": False}}
    try:
        model = convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, fitted.n_features]))],
            options=options,
            target_opset=TARGET_OPSET,
        )
    except Exception as exc:  # skl2onnx raises many unrelated types
        raise ExportError(f"skl2onnx could not export {fitted.kind}: {exc}") from exc
    model.graph.name = f"robotpm_{fitted.kind}"  # skl2onnx names graphs with a random uuid
    model.ir_version = TARGET_IR_VERSION  # stated, not left to skl2onnx and the installed onnx
    canonical_opsets(model)
    domains = {node.domain for node in model.graph.node} - ALLOWED_DOMAINS
    if domains:
        raise ExportError(f"the exported graph uses non-standard operator domains {sorted(domains)}")
    return bytes(model.SerializeToString())


def canonical_opsets(model: Any) -> None:
    """Put the graph's opset imports in domain order, in place.

    skl2onnx fills them from a set of (domain, version) pairs, so their order, and with it
    the model's bytes, depended on ``PYTHONHASHSEED``.
    """
    ordered = sorted(((o.domain, o.version) for o in model.opset_import), key=lambda pair: pair[0])
    del model.opset_import[:]
    for domain, version in ordered:
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version


def reference_outputs(fitted: FittedModel, features: FloatArray) -> FloatArray:
    """scikit-learn's outputs for float32-cast features: probabilities, predictions or anomaly scores."""
    x32 = np.asarray(features, dtype=np.float32)
    if fitted.task == "classifier":
        return np.asarray(fitted.estimator.predict_proba(x32), dtype=np.float64)
    if fitted.task == "anomaly":  # the anomaly score, higher is worse: -score_samples
        return -np.asarray(fitted.estimator.score_samples(x32), dtype=np.float64).reshape(-1, 1)
    return np.asarray(fitted.estimator.predict(x32), dtype=np.float64).reshape(-1, 1)


def score_output_name(fitted: FittedModel) -> str:
    """The ONNX output holding the score for this task."""
    return {"classifier": "probabilities", "regressor": "variable", "anomaly": "scores"}[fitted.task]


def run_onnx(onnx_bytes: bytes, features: FloatArray, output: str) -> FloatArray:
    """One output of the graph for float32-cast features, as float64 of shape (n, k)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    result = session.run([output], {INPUT_NAME: np.asarray(features, dtype=np.float32)})[0]
    out = np.asarray(result, dtype=np.float64)
    return out.reshape(len(features), -1)


def check_parity(
    expected: FloatArray,
    actual: FloatArray,
    config: ParityConfig,
    what: str = "model",
    relative: bool = False,
) -> tuple[float, float]:
    """(max |diff|, share of rows beyond tolerance); raises `ParityError` when out of tolerance.

    With `relative`, the tolerance scales with the magnitude of the expected value (at
    least 1): regressors predicting e.g. cycles of life accumulate float32 rounding over
    hundreds of trees.
    """
    if expected.shape != actual.shape:
        raise ParityError(
            f"{what}: ONNX output shape {actual.shape} differs from scikit-learn's {expected.shape}"
        )
    diff = np.abs(expected - actual)
    if not np.isfinite(actual).all():
        raise ParityError(f"{what}: ONNX output has NaN or infinite values")
    max_diff = float(diff.max()) if diff.size else 0.0
    limit = config.tolerance * (np.maximum(1.0, np.abs(expected)) if relative else 1.0)
    rows_over: npt.NDArray[np.bool_] = (
        np.asarray((diff > limit).any(axis=1)) if diff.size else np.zeros(0, dtype=bool)
    )
    fraction = float(rows_over.mean()) if len(rows_over) else 0.0
    if fraction > config.max_mismatch_fraction:
        raise ParityError(
            f"{what}: ONNX differs from scikit-learn on {int(rows_over.sum())} of {len(rows_over)} test rows "
            f"(max |diff| {max_diff:.3g} > tolerance {config.tolerance:g}); refusing to write the model"
        )
    return max_diff, fraction


class TrainedMLModel:
    """Stage 6: exports a fitted model, checks parity on the test set, builds the manifest."""

    def __init__(self, parity: ParityConfig) -> None:
        self._parity = parity

    def export(
        self, fitted: FittedModel, test_features: FloatArray, onnx_bytes: bytes | None = None
    ) -> ExportedModel:
        """Export (or take given ONNX bytes) and check parity on `test_features`; see the module."""
        onnx_bytes = to_onnx(fitted) if onnx_bytes is None else onnx_bytes
        output = score_output_name(fitted)
        expected = reference_outputs(fitted, test_features)
        actual = run_onnx(onnx_bytes, test_features, output)
        max_diff, fraction = check_parity(
            expected, actual, self._parity, fitted.kind, relative=fitted.task == "regressor"
        )
        outputs = _graph_outputs(onnx_bytes)
        return ExportedModel(onnx_bytes, outputs, output, max_diff, fraction)

    @staticmethod
    def manifest(
        *,
        model_id: str,
        version: int,
        task: Task,
        spec: FeatureSpec,
        exported: ExportedModel,
        heads: Sequence[AlertHead],
        train_features: FloatArray,
        golden_features: FloatArray,
        metrics: dict[str, float],
        lineage: dict[str, str],
        created: datetime | None = None,
        healthy_features: FloatArray | None = None,
    ) -> ModelManifest:
        """The manifest of an exported model: interface, heads, reference statistics, golden vectors.

        `healthy_features` (the training windows whose truth is healthy) give the healthy
        reference the agent explains alerts against; without them (or with none) it is left out.
        """
        reference = reference_statistics(train_features, bins=True)  # bins: the agent's PSI drift test
        healthy = (
            reference_statistics(healthy_features)
            if healthy_features is not None and len(healthy_features)
            else None
        )
        golden_out = run_onnx(exported.onnx_bytes, golden_features, exported.score_output)
        golden = tuple(
            GoldenVector(
                features=tuple(float(v) for v in np.asarray(row, dtype=np.float32).astype(np.float64)),
                expected={exported.score_output: tuple(float(v) for v in out)},
                tolerance=1e-4,
            )
            for row, out in zip(golden_features, golden_out, strict=True)
        )
        clean_metrics = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
        return ModelManifest(
            model_id=model_id,
            version=version,
            created=created or datetime.now(timezone.utc),
            task=task,
            feature_spec=spec,
            feature_spec_hash=spec.spec_hash(),
            feature_names=spec.feature_names(),
            onnx=OnnxInterface(
                input_name=INPUT_NAME,
                input_shape=(None, spec.n_features),
                outputs=exported.outputs,
                opset=main_opset(exported.onnx_bytes),
            ),
            heads=tuple(heads),
            reference=reference,
            healthy_reference=healthy,
            golden=golden,
            metrics=clean_metrics,
            training=lineage,
            sha256=exported.sha256,
            length=len(exported.onnx_bytes),
        )


def reference_statistics(features: FloatArray, *, bins: bool = False) -> FeatureReference:
    """Mean, std and 1st, 50th and 99th percentiles of each feature of `features` (windows × features).

    With `bins`, also the quantile bins of the agent's PSI drift test.
    """
    return FeatureReference(
        mean=tuple(float(v) for v in features.mean(axis=0)),
        std=tuple(float(v) for v in features.std(axis=0)),
        quantiles={
            name: tuple(float(v) for v in np.quantile(features, q, axis=0))
            for name, q in (("p01", 0.01), ("p50", 0.5), ("p99", 0.99))
        },
        bins=ReferenceBins.from_features(features) if bins else None,
    )


def main_opset(onnx_bytes: bytes) -> int | None:
    """The version of the main operator domain the graph imports (skl2onnx lowers it to what it needs)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    versions = [int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return versions[0] if versions else None


def _graph_outputs(onnx_bytes: bytes) -> tuple[str, ...]:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return tuple(o.name for o in model.graph.output)
