"""The model manifest: everything the agent must know about a model before it scores with it.

The trainer writes a ``manifest.json`` beside every ``model.onnx``. The agent reads
it to know which features to compute (the feature spec and its hash), how to feed
the ONNX graph (input and output names), what each output column means (one
`AlertHead` per component and failure mode, with calibrated thresholds), the
reference statistics of the training features (all windows, for drift; the healthy
windows, for alert explanations), and golden vectors with expected outputs (a smoke
test before a model goes live).

A signed model also holds ``manifest.sig`` (`SIGNATURE_FILE`), and its manifest names
the key in ``signing_key_id``; ``expires`` bounds how long the agent accepts it. See
`agent.models.verify`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.contract.errors import ManifestError
from agent.contract.features import FeatureSpec

MANIFEST_SCHEMA_VERSION: Final = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SIGNATURE_FILE = "manifest.sig"
"""Beside ``manifest.json`` in a signed model: the raw 64-byte Ed25519 signature over its exact bytes."""

Severity = Literal["warning", "critical"]
Direction = Literal["higher_is_worse", "lower_is_worse"]
Task = Literal["failure_classifier", "anomaly", "remaining_life"]


class Thresholds(BaseModel):
    """Calibrated score thresholds of one alert head.

    ``clear`` is the hysteresis threshold: an open alert clears only once the score
    is back on the good side of it. For ``higher_is_worse`` heads,
    ``clear <= warning <= critical``; for ``lower_is_worse`` the order is reversed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    warning: float
    critical: float
    clear: float
    target_false_alarm_rate: float | None = Field(default=None, ge=0.0, le=1.0)


class AlertHead(BaseModel):
    """One column of the model's score output, tied to a component and a failure mode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: str = Field(description="ONNX output name holding the score.")
    column: int = Field(default=0, ge=0, description="Column of that output for this head.")
    component: str = Field(min_length=1, description="E.g. 'joint3', 'gripper'.")
    failure_mode: str = Field(min_length=1, description="E.g. 'bearing_wear'.")
    meaning: str = Field(description="What the score means, for people.")
    direction: Direction = "higher_is_worse"
    thresholds: Thresholds

    @model_validator(mode="after")
    def _ordered(self) -> AlertHead:
        t = self.thresholds
        ordered = (
            t.clear <= t.warning <= t.critical
            if self.direction == "higher_is_worse"
            else t.clear >= t.warning >= t.critical
        )
        if not ordered:
            raise ValueError(
                f"thresholds of {self.component}/{self.failure_mode} are out of order for "
                f"{self.direction}: clear={t.clear}, warning={t.warning}, critical={t.critical}"
            )
        return self


REFERENCE_BINS: Final = 10
"""Quantile bins per feature the trainer writes (deciles; fewer where training values repeat)."""


class ReferenceBins(BaseModel):
    """Quantile bins of every training feature, for the PSI drift test (`agent.streams.drift`).

    Feature ``f`` has the strictly increasing inner cut points ``edges[f]`` and
    ``len(edges[f]) + 1`` bins: a value ``x`` falls in bin ``i`` = the number of cut
    points ``<= x`` (``numpy.searchsorted(edges[f], x, side="right")``), so the first
    and last bins are open-ended. ``fractions[f][i]`` is the share of training windows
    in bin ``i``; both sides count with `bin_indices`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    edges: tuple[tuple[float, ...], ...]
    fractions: tuple[tuple[float, ...], ...]
    windows: int = Field(ge=1, description="Training windows the bins were computed on.")

    @model_validator(mode="after")
    def _shaped(self) -> ReferenceBins:
        if len(self.edges) != len(self.fractions):
            raise ValueError(
                f"{len(self.edges)} features have edges but {len(self.fractions)} have fractions"
            )
        for f, (edges, fractions) in enumerate(zip(self.edges, self.fractions, strict=True)):
            if len(fractions) != len(edges) + 1:
                raise ValueError(f"feature {f}: {len(edges)} cut points need {len(edges) + 1} fractions")
            if any(b <= a for a, b in itertools.pairwise(edges)) or not all(np.isfinite(edges)):
                raise ValueError(f"feature {f}: cut points must be finite and strictly increasing")
            if any(v < 0 for v in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
                raise ValueError(f"feature {f}: fractions must be >= 0 and sum to 1")
        return self

    @classmethod
    def from_features(cls, features: npt.NDArray[np.float64], n_bins: int = REFERENCE_BINS) -> ReferenceBins:
        """Bins of a ``(windows, n_features)`` training matrix (rows with a non-finite value skipped)."""
        matrix = np.asarray(features, dtype=np.float64)
        matrix = matrix[np.isfinite(matrix).all(axis=1)]
        if not len(matrix):
            raise ValueError("no finite training windows to compute reference bins from")
        levels = np.arange(1, n_bins) / n_bins
        edges: list[tuple[float, ...]] = []
        fractions: list[tuple[float, ...]] = []
        for column in matrix.T:
            cuts = np.unique(np.quantile(column, levels))
            cuts = cuts[cuts > column.min()]  # a cut at the minimum would leave the first bin empty
            counts = np.bincount(bin_indices(cuts, column), minlength=len(cuts) + 1)
            edges.append(tuple(float(c) for c in cuts))
            fractions.append(tuple(float(c) for c in counts / len(column)))
        return cls(edges=tuple(edges), fractions=tuple(fractions), windows=len(matrix))


def bin_indices(edges: npt.ArrayLike, values: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """The `ReferenceBins` bin of each value against one feature's cut points."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values), side="right")


class FeatureReference(BaseModel):
    """Statistics of training features, in feature order: for z-scores, drift and attribution."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: tuple[float, ...]
    std: tuple[float, ...]
    quantiles: dict[str, tuple[float, ...]] = Field(
        default_factory=dict, description="E.g. {'p01': (...), 'p99': (...)}"
    )
    bins: ReferenceBins | None = Field(
        default=None, description="Quantile bins for the PSI drift test; absent in older manifests."
    )


class GoldenVector(BaseModel):
    """A feature vector and the outputs the exported model must give for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: tuple[float, ...]
    expected: dict[str, tuple[float, ...]]
    tolerance: float = 1e-4


class OnnxInterface(BaseModel):
    """How to feed and read the ONNX graph."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_name: str
    input_shape: tuple[int | None, ...]
    input_dtype: Literal["float32"] = "float32"
    outputs: tuple[str, ...] = Field(min_length=1)
    opset: int | None = None


class ModelManifest(BaseModel):
    """The contract of one model version; see the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    model_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: int = Field(ge=1, description="Monotonic; the agent refuses downgrades.")
    created: datetime
    task: Task
    feature_spec: FeatureSpec
    feature_spec_hash: str
    feature_names: tuple[str, ...]
    onnx: OnnxInterface
    heads: tuple[AlertHead, ...] = Field(min_length=1)
    reference: FeatureReference
    healthy_reference: FeatureReference | None = Field(
        default=None,
        description="Statistics of the training windows whose truth was healthy: the baseline of the "
        "alert explanations (z-scores, and the attribution's replacement values). None in manifests "
        "written before it existed; the explanations then use `reference`.",
    )
    golden: tuple[GoldenVector, ...] = ()
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, str] = Field(
        default_factory=dict, description="Lineage: data hash, code version, config hash."
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of model.onnx.")
    length: int = Field(ge=1, description="Size of model.onnx in bytes.")
    signing_key_id: str | None = None
    expires: datetime | None = None
    channel: str = "stable"

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        spec = self.feature_spec
        if self.feature_spec_hash != spec.spec_hash():
            raise ValueError("feature_spec_hash does not match feature_spec")
        if self.feature_names != spec.feature_names():
            raise ValueError("feature_names do not match feature_spec")
        n = spec.n_features
        for name, ref in (("reference", self.reference), ("healthy_reference", self.healthy_reference)):
            if ref is not None and any(
                len(values) != n for values in (ref.mean, ref.std, *ref.quantiles.values())
            ):
                raise ValueError(f"{name} statistics must have {n} entries")
            if ref is not None and ref.bins is not None and len(ref.bins.edges) != n:
                raise ValueError(f"{name} bins must have {n} features")
        for head in self.heads:
            if head.output not in self.onnx.outputs:
                raise ValueError(
                    f"head {head.component}/{head.failure_mode} reads unknown output {head.output!r}"
                )
        keys = [(h.component, h.failure_mode) for h in self.heads]
        if len(set(keys)) != len(keys):
            raise ValueError("two heads share a component and failure mode")
        for golden in self.golden:
            if len(golden.features) != n:
                raise ValueError(f"golden vector has {len(golden.features)} features, expected {n}")
        return self

    @property
    def explanation_reference(self) -> FeatureReference:
        """The baseline alert explanations compare with: the healthy reference, else all training windows."""
        return self.healthy_reference if self.healthy_reference is not None else self.reference

    @property
    def label(self) -> str:
        """``<model_id>@<version>``, for logs and alerts."""
        return f"{self.model_id}@{self.version}"

    def to_json(self) -> str:
        """The manifest as indented JSON, as written to disk."""
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest") -> ModelManifest:
        """Parse and validate a manifest; raises `ManifestError` naming the problem."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise ManifestError(f"{source}: {where}: {first['msg']}") from exc

    @classmethod
    def read(cls, model_dir: Path) -> ModelManifest:
        """Read ``manifest.json`` from a model directory."""
        path = model_dir / MANIFEST_FILE
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
        return cls.from_json(text, source=str(path))


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 hex digest and length of a file."""
    digest = hashlib.sha256()
    length = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            length += len(block)
    return digest.hexdigest(), length


def canonical_json(obj: object) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces), e.g. for hashing or signing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
