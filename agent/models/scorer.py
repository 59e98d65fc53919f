"""Scoring feature vectors with an ONNX model through onnxruntime.

`OnnxScorer.load` reads a model directory (``model.onnx`` + ``manifest.json``),
checks the bytes against the manifest's sha256 and length *before* onnxruntime
parses them (after an `agent.models.verify.ModelVerifier` checked the manifest's signature,
for models from the store), checks the graph's inputs and outputs against the manifest, and
builds a single-threaded session (the agent scores one batch per read chunk, so
intra-op threads would only add wake-ups). Its in-memory twin is
`agent.testing.FunctionScorer`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from agent.contract.manifest import MODEL_FILE, ModelManifest
from agent.errors import ModelLoadError, ModelRejectedError

if TYPE_CHECKING:
    from agent.models.verify import ModelVerifier

FloatArray = npt.NDArray[np.float64]

MAX_MODEL_BYTES = 16 * 1024 * 1024
"""Models larger than this are refused before they are read in full."""


class OnnxScorer:
    """A loaded onnxruntime session that scores feature batches for one manifest."""

    __slots__ = ("_input", "_manifest", "_outputs", "_session")

    def __init__(self, model_bytes: bytes, manifest: ModelManifest) -> None:
        self._manifest = manifest
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/… types
            raise ModelLoadError(f"{manifest.label}: onnxruntime refused the model: {exc}") from exc
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if manifest.onnx.input_name not in inputs or len(inputs) != 1:
            raise ModelRejectedError(
                f"{manifest.label}: graph inputs {sorted(inputs)} != manifest input "
                f"{manifest.onnx.input_name!r}"
            )
        width = inputs[manifest.onnx.input_name].shape[-1]
        if isinstance(width, int) and width != manifest.feature_spec.n_features:
            raise ModelRejectedError(
                f"{manifest.label}: graph takes {width} features, the feature spec makes "
                f"{manifest.feature_spec.n_features}"
            )
        missing = set(manifest.onnx.outputs) - outputs
        if missing:
            raise ModelRejectedError(f"{manifest.label}: graph lacks outputs {sorted(missing)}")
        self._input = manifest.onnx.input_name
        self._outputs = list(manifest.onnx.outputs)

    def __repr__(self) -> str:
        return f"OnnxScorer({self._manifest.label})"

    @property
    def manifest(self) -> ModelManifest:
        """The manifest of the loaded model."""
        return self._manifest

    @classmethod
    def load(cls, model_dir: Path, *, verifier: ModelVerifier | None = None) -> OnnxScorer:
        """Load and check a model directory; raises `ModelError` subclasses on any problem.

        With a `verifier` (models from the store), the manifest's signature and expiry
        are checked on the very bytes that are parsed, before ``model.onnx`` is read;
        the model bytes must then match that manifest's sha256 and length.
        """
        manifest = (
            verifier.read_manifest(model_dir) if verifier is not None else ModelManifest.read(model_dir)
        )
        return cls(read_verified_model(model_dir / MODEL_FILE, manifest), manifest)

    def score(self, features: FloatArray) -> Mapping[str, FloatArray]:
        """Outputs by name for a batch of shape ``(n, n_features)``; each of shape ``(n, k)``."""
        batch = np.ascontiguousarray(features, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[0] == 0:
            return {name: np.empty((0, 1)) for name in self._outputs}
        results = self._session.run(self._outputs, {self._input: batch})
        out: dict[str, FloatArray] = {}
        for name, value in zip(self._outputs, results, strict=True):
            array = np.asarray(value, dtype=np.float64)
            out[name] = array.reshape(len(batch), -1)
        return out

    def check_golden(self) -> None:
        """Run the golden vectors; raise `ModelRejectedError` on a mismatch or a non-finite output."""
        for i, golden in enumerate(self._manifest.golden):
            got = self.score(np.asarray([golden.features], dtype=np.float64))
            for name, expected in golden.expected.items():
                if name not in got:
                    raise ModelRejectedError(f"{self._manifest.label}: golden {i}: no output {name!r}")
                actual = got[name][0]
                if not np.isfinite(actual).all():
                    raise ModelRejectedError(f"{self._manifest.label}: golden {i}: non-finite output")
                if actual.shape != (len(expected),) or not np.allclose(
                    actual, expected, atol=golden.tolerance, rtol=0.0
                ):
                    raise ModelRejectedError(
                        f"{self._manifest.label}: golden {i}: output {name} = {actual.tolist()}, "
                        f"expected {list(expected)}"
                    )


def read_verified_model(path: Path, manifest: ModelManifest) -> bytes:
    """The model bytes, after their length and sha256 match the manifest."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the model: {exc.strerror}") from exc
    if size != manifest.length or size > MAX_MODEL_BYTES:
        raise ModelRejectedError(
            f"{path}: size {size} bytes, manifest says {manifest.length} (cap {MAX_MODEL_BYTES})"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ModelRejectedError(f"{path}: sha256 {digest[:12]}… does not match the manifest")
    return data
