"""ONNX export: every estimator strategy matches scikit-learn; IsolationForest as one compact TreeEnsemble."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trainer.config import ModelParams, ParityConfig
from trainer.errors import ParityError
from trainer.stages.projection import contrast_matrix
from trainer.stages.trained_model import TrainedMLModel, reference_outputs, run_onnx, to_onnx
from trainer.stages.training import ModelTraining

RNG = np.random.default_rng(11)
FEATURES = RNG.normal(size=(1500, 12))
LABELS = (FEATURES[:, 0] + 0.5 * FEATURES[:, 3] > 0.8).astype(np.int64) + (FEATURES[:, 5] > 1.2)
TARGET = 3.0 * FEATURES[:, 1] - FEATURES[:, 2] ** 2 + RNG.normal(scale=0.1, size=1500)
TEST = RNG.normal(size=(400, 12))
KINDS = ("random_forest", "extra_trees", "hist_gradient_boosting", "logistic_regression")


def _training() -> ModelTraining:
    return ModelTraining(ModelParams(n_estimators=15, max_depth=6), seed=3)


@pytest.mark.parametrize("kind", KINDS)
def test_classifiers_match_scikit_learn(kind: str) -> None:
    """Each classifier strategy exports to a graph whose probabilities equal predict_proba within 1e-5."""
    fitted = _training().fit(FEATURES, LABELS, kind=kind)  # type: ignore[arg-type]
    exported = TrainedMLModel(ParityConfig(tolerance=1e-5)).export(fitted, TEST)
    assert exported.max_abs_diff <= 1e-5
    assert "probabilities" in exported.outputs


@pytest.mark.parametrize("kind", KINDS)
def test_regressors_match_scikit_learn(kind: str) -> None:
    """Each regressor strategy (logistic_regression means the linear baseline, Ridge) matches predict."""
    fitted = _training().fit(FEATURES, TARGET, task="regressor", kind=kind)  # type: ignore[arg-type]
    exported = TrainedMLModel(ParityConfig(tolerance=1e-5)).export(fitted, TEST)
    assert exported.score_output == "variable"


def test_projection_pipeline_exports_as_one_matmul_in_front() -> None:
    """A projected forest's graph starts with a MatMul and matches scikit-learn."""
    names = tuple(f"j{j}_temp__{s}" for j in range(1, 4) for s in ("mean", "max")) + tuple(
        f"j{j}_current__{s}" for j in range(1, 3) for s in ("mean", "min", "max")
    )
    matrix, projected = contrast_matrix(names)
    assert "j1_temp__mean-joints" in projected
    training = ModelTraining(ModelParams(n_estimators=10, max_depth=5), seed=3, projection=matrix)
    fitted = training.fit(FEATURES, LABELS)
    graph = onnx.load_from_string(to_onnx(fitted))
    assert graph.graph.node[0].op_type == "MatMul"
    TrainedMLModel(ParityConfig(tolerance=1e-5)).export(fitted, TEST)


class TestCompactIsolationForest:
    def test_one_tree_ensemble_node_and_parity_within_1e_6(self) -> None:
        """The graph holds a single TreeEnsembleRegressor and equals -score_samples within 1e-6."""
        for max_features in (1.0, 0.6):
            training = ModelTraining(ModelParams(n_estimators=50), seed=5)
            fitted = training.fit(FEATURES, np.zeros(len(FEATURES)), task="anomaly")
            fitted.estimator.set_params(max_features=max_features).fit(FEATURES.astype(np.float32))
            onnx_bytes = to_onnx(fitted)
            graph = onnx.load_from_string(onnx_bytes)
            assert [n.op_type for n in graph.graph.node] == ["TreeEnsembleRegressor", "Mul", "Exp"]
            expected = reference_outputs(fitted, TEST)
            actual = run_onnx(onnx_bytes, TEST, "scores")
            assert np.abs(expected - actual).max() <= 1e-6

    def test_anomalies_score_higher(self) -> None:
        """Points far from the training data get higher anomaly scores than typical ones."""
        fitted = ModelTraining(ModelParams(n_estimators=50), seed=5).fit(
            FEATURES, np.zeros(1), task="anomaly"
        )
        session = ort.InferenceSession(to_onnx(fitted))
        typical = session.run(["scores"], {"features": TEST[:50].astype(np.float32)})[0]
        outliers = session.run(["scores"], {"features": (TEST[:50] + 6.0).astype(np.float32)})[0]
        assert outliers.mean() > typical.mean() + 0.1


def test_a_wrong_shape_is_a_parity_error() -> None:
    """An ONNX output with the wrong shape is refused."""
    from trainer.stages.trained_model import check_parity

    with pytest.raises(ParityError, match="shape"):
        check_parity(np.zeros((3, 2)), np.zeros((3, 1)), ParityConfig())
