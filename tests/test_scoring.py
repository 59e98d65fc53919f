"""Scoring with real onnxruntime sessions, and the model slot that picks up newer verified models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.config import ModelConfig
from agent.errors import ModelLoadError, ModelRejectedError
from agent.models.scorer import OnnxScorer
from agent.models.slot import ModelSlot
from tests.models import SPEC, write_linear_model


class TestOnnxScorer:
    def test_scores_are_the_linear_function_of_the_watched_feature(self, tmp_path: Path) -> None:
        """A loaded model returns, per head, scale × the watched feature, shape (n, heads)."""
        write_linear_model(tmp_path, scale=2.0)
        scorer = OnnxScorer.load(tmp_path)
        features = np.zeros((3, SPEC.n_features))
        features[:, SPEC.feature_names().index("j1_current__mean")] = [0.0, 1.0, 2.5]
        scores = scorer.score(features)
        np.testing.assert_allclose(scores["score"][:, 0], [0.0, 2.0, 5.0], rtol=1e-6)

    def test_golden_vectors_of_a_good_model_pass(self, tmp_path: Path) -> None:
        """The golden test of an untouched model raises nothing."""
        write_linear_model(tmp_path)
        OnnxScorer.load(tmp_path).check_golden()

    def test_a_flipped_bit_in_the_model_is_refused_before_parsing(self, tmp_path: Path) -> None:
        """A model whose bytes differ from the manifest's sha256 is refused."""
        write_linear_model(tmp_path)
        data = bytearray((tmp_path / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0x01
        (tmp_path / "model.onnx").write_bytes(bytes(data))
        with pytest.raises(ModelRejectedError, match="sha256"):
            OnnxScorer.load(tmp_path)

    def test_a_model_of_the_wrong_length_is_refused(self, tmp_path: Path) -> None:
        """Extra bytes appended to the model make it refused on length alone."""
        write_linear_model(tmp_path)
        with (tmp_path / "model.onnx").open("ab") as handle:
            handle.write(b"\x00" * 10)
        with pytest.raises(ModelRejectedError, match="size"):
            OnnxScorer.load(tmp_path)

    def test_a_golden_mismatch_is_refused(self, tmp_path: Path) -> None:
        """A manifest whose golden outputs the model does not reproduce is refused by check_golden."""
        write_linear_model(tmp_path)
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        manifest["golden"][0]["expected"]["score"] = [123.0]
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelRejectedError, match="golden"):
            OnnxScorer.load(tmp_path).check_golden()

    def test_garbage_bytes_that_match_their_manifest_are_refused_before_onnxruntime(
        self, tmp_path: Path
    ) -> None:
        """Random bytes with a correct sha256 are refused by the static checks, not handed to onnxruntime."""
        write_linear_model(tmp_path)
        garbage = np.random.default_rng(1).bytes(300)
        (tmp_path / "model.onnx").write_bytes(garbage)
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        import hashlib

        manifest.update(sha256=hashlib.sha256(garbage).hexdigest(), length=len(garbage))
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelRejectedError, match="not an ONNX model"):
            OnnxScorer.load(tmp_path)


class TestModelSlot:
    def _config(self, tmp_path: Path, bundled: bool = True) -> ModelConfig:
        if bundled:
            write_linear_model(tmp_path / "bundled", version=1)
        return ModelConfig(directory=tmp_path / "store", bundled=tmp_path / "bundled" if bundled else None)

    def test_the_bundled_model_serves_while_the_store_is_empty(self, tmp_path: Path) -> None:
        """With nothing in the store, the bundled model is loaded."""
        slot = ModelSlot(self._config(tmp_path))
        assert 1 == slot.load_initial().manifest.version

    def test_without_store_or_bundled_model_the_error_names_both(self, tmp_path: Path) -> None:
        """No model anywhere is a clear ModelLoadError, not a traceback from onnxruntime."""
        config = ModelConfig(directory=tmp_path / "store", bundled=tmp_path / "absent")
        with pytest.raises(ModelLoadError, match="absent"):
            ModelSlot(config).load_initial()

    def test_a_newer_version_in_the_store_is_offered_and_older_ones_are_not(self, tmp_path: Path) -> None:
        """poll() offers version 3 over the current 1, and never offers a version at or below the current."""
        slot = ModelSlot(self._config(tmp_path))
        slot.load_initial()
        write_linear_model(tmp_path / "store" / "v3", version=3)
        candidate = slot.poll()
        assert candidate is not None
        assert 3 == candidate.manifest.version
        slot.accept(candidate)
        write_linear_model(tmp_path / "store" / "v2", version=2)
        assert slot.poll() is None

    def test_a_bad_newer_model_is_refused_and_the_current_one_keeps_serving(self, tmp_path: Path) -> None:
        """A corrupt version 2 is not offered; the current model stays; a fixed version 2 is then offered."""
        slot = ModelSlot(self._config(tmp_path))
        slot.load_initial()
        write_linear_model(tmp_path / "store" / "v2", version=2)
        (tmp_path / "store" / "v2" / "model.onnx").write_bytes(b"not a model")
        assert slot.poll() is None
        assert 1 == slot.current.manifest.version
        write_linear_model(tmp_path / "store" / "v2", version=2)
        fixed = slot.poll()
        assert fixed is not None
        assert 2 == fixed.manifest.version

    def test_the_newest_valid_store_version_wins_at_start(self, tmp_path: Path) -> None:
        """At start the highest valid version in the store is loaded, skipping a broken higher one."""
        config = self._config(tmp_path)
        write_linear_model(tmp_path / "store" / "a", version=4)
        write_linear_model(tmp_path / "store" / "b", version=5)
        (tmp_path / "store" / "b" / "manifest.json").write_text("{ not json")
        assert 4 == ModelSlot(config).load_initial().manifest.version
