"""Tiny, hand-built ONNX models with valid manifests, so agent tests know exactly when a score crosses.

The model is linear: ``score = features @ weights + bias`` (ONNX MatMul + Add), one
output column per alert head. `write_linear_model` writes ``model.onnx`` and a
manifest (sha256, length, golden vectors) into a directory, as the trainer would.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.contract.features import FeatureSpec
from agent.contract.manifest import (
    AlertHead,
    FeatureReference,
    GoldenVector,
    ModelManifest,
    OnnxInterface,
    Thresholds,
    file_sha256,
)

CHANNELS = ("j1_current", "j1_temp")
SPEC = FeatureSpec(channels=CHANNELS, window=4, hop=2, statistics=("mean", "max"))


def linear_onnx(weights: np.ndarray, bias: np.ndarray) -> bytes:
    """A MatMul+Add graph taking float32 ``features`` (n, F) to ``score`` (n, H)."""
    n_features, n_heads = weights.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["product"]),
            helper.make_node("Add", ["product", "B"], ["score"]),
        ],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, n_heads])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_linear_model(
    directory: Path,
    *,
    version: int = 1,
    spec: FeatureSpec = SPEC,
    watch: str = "j1_current__mean",
    scale: float = 1.0,
    thresholds: tuple[float, float, float] = (0.5, 0.8, 0.3),
    model_id: str = "test-linear",
    heads: Sequence[tuple[str, str]] = (("joint1", "overcurrent"),),
    healthy_reference: FeatureReference | None = None,
) -> ModelManifest:
    """Write a model whose every head scores ``scale * <watch feature>``; return its manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    names = spec.feature_names()
    weights = np.zeros((spec.n_features, len(heads)))
    weights[names.index(watch), :] = scale
    data = linear_onnx(weights, np.zeros(len(heads)))
    (directory / "model.onnx").write_bytes(data)
    sha, length = file_sha256(directory / "model.onnx")
    warning, critical, clear = thresholds
    golden = []
    for k in range(3):  # the agent asks for at least three (agent.model.min_golden_vectors)
        golden_x = tuple(float(i) / 10 + k * 0.05 for i in range(spec.n_features))
        golden_y = tuple(
            float(np.float32(np.dot(np.float32(golden_x), weights[:, i].astype(np.float32))))
            for i in range(len(heads))
        )
        golden.append(GoldenVector(features=golden_x, expected={"score": golden_y}))
    manifest = ModelManifest(
        model_id=model_id,
        version=version,
        created=datetime(2026, 1, 1, tzinfo=timezone.utc),
        task="failure_classifier",
        feature_spec=spec,
        feature_spec_hash=spec.spec_hash(),
        feature_names=names,
        onnx=OnnxInterface(
            input_name="features", input_shape=(None, spec.n_features), outputs=("score",), opset=17
        ),
        heads=tuple(
            AlertHead(
                output="score",
                column=i,
                component=component,
                failure_mode=mode,
                meaning=f"{scale} x {watch}",
                thresholds=Thresholds(warning=warning, critical=critical, clear=clear),
            )
            for i, (component, mode) in enumerate(heads)
        ),
        reference=FeatureReference(mean=(0.0,) * spec.n_features, std=(1.0,) * spec.n_features),
        healthy_reference=healthy_reference,
        golden=tuple(golden),
        sha256=sha,
        length=length,
    )
    (directory / "manifest.json").write_text(manifest.to_json())
    return manifest


def adding_loop_body(addend: onnx.TensorProto, shape: Sequence[int | None] = (1,)) -> onnx.GraphProto:
    """The body of an ONNX Loop that carries one float tensor of `shape`, adding `addend` each trip.

    Its inputs are the trip number, the condition (passed on unchanged: the loop runs its
    whole trip count) and the carried value; `addend` is the body's own initializer.
    """
    value = helper.make_tensor_value_info
    inputs = [value("i", TensorProto.INT64, []), value("cond_in", TensorProto.BOOL, [])]
    outputs = [value("cond_out", TensorProto.BOOL, []), value("v_out", TensorProto.FLOAT, shape)]
    nodes = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Add", ["v_in", addend.name], ["v_out"]),
    ]
    return helper.make_graph(
        nodes, "body", [*inputs, value("v_in", TensorProto.FLOAT, shape)], outputs, initializer=[addend]
    )
