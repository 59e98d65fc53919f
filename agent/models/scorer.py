"""Scoring feature vectors with an ONNX model through onnxruntime.

`OnnxScorer` builds a single-threaded session from model bytes that
`agent.models.verify.ModelVerifier.admit` has already checked (signature, sha256 and length,
static checks), checks the session's inputs and outputs against the manifest once more, and
scores batches (the agent scores one batch per read chunk, so intra-op threads would only
add wake-ups). `OnnxScorer.load` does both for a directory. Its in-memory twin is
`agent.testing.FunctionScorer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from agent.contract.manifest import ModelManifest
from agent.errors import ModelLoadError, ModelRejectedError

if TYPE_CHECKING:  # the probe child loads a scorer without the verifier's imports
    from agent.models.verify import ModelVerifier

FloatArray = npt.NDArray[np.float64]


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
        """Admit and load a model directory; raises `ModelError` subclasses on any problem.

        With a `verifier` (models from the store) every check of `ModelVerifier.admit` applies,
        the signature first; without one the directory is a trusted source (the bundled model):
        no signature or expiry, but size, sha256 and the static checks.
        """
        from agent.models.verify import ModelVerifier

        admitted = (verifier or ModelVerifier()).admit(model_dir, trusted_source=verifier is None)
        return cls(admitted.model_bytes, admitted.manifest)

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
            try:
                got = self.score(np.asarray([golden.features], dtype=np.float64))
            except Exception as exc:  # onnxruntime raises its own types (e.g. out of memory)
                raise ModelRejectedError(
                    f"{self._manifest.label}: golden {i}: scoring failed: {exc}"
                ) from exc
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
