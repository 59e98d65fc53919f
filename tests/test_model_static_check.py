"""Static checks of ONNX bytes before onnxruntime sees them: the agent's own protobuf reader.

Models are built with the onnx package (the trainer's dependency; the agent never imports it,
tests/test_boundary.py), including the attacks onnxruntime itself lets through: external data
read from the working directory, operators of custom domains, subgraphs hiding either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from agent.config import packaged_model
from agent.contract.manifest import ModelManifest
from agent.errors import ModelRejectedError
from agent.models.protowire import WireError, fields, read_varint
from agent.models.static_check import StaticPolicy, check_model, inspect_model
from agent.models.verify import ModelVerifier
from tests.models import SPEC, linear_onnx, write_linear_model

N = SPEC.n_features


def _model(
    nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto] = (), **kwargs: object
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, N])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=list(initializers),
        **kwargs,  # type: ignore[arg-type]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _external(tensor: onnx.TensorProto, location: str = "secret.bin") -> onnx.TensorProto:
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * N))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.ClearField("raw_data")
    return tensor


def _weights(name: str = "W") -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones((N, 1), dtype=np.float32), name)


def _matmul(weights: str = "W") -> onnx.NodeProto:
    return helper.make_node("MatMul", ["features", weights], ["score"])


def _if_with_subgraph(inner_initializer: onnx.TensorProto, op_domain: str = "") -> onnx.ModelProto:
    """An If whose then-branch holds `inner_initializer` (or a node of `op_domain`) three levels deep."""

    def branch(depth: int) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"o{depth}", TensorProto.FLOAT, [None, 1])
        if depth == 0:
            node = helper.make_node("MatMul", ["features", "W"], ["o0"], domain=op_domain)
            return helper.make_graph([node], "leaf", [], [out], initializer=[inner_initializer])
        cond = helper.make_node(
            "Constant", [], [f"c{depth}"], value=helper.make_tensor("c", TensorProto.BOOL, [], [1])
        )
        inner = helper.make_node(
            "If", [f"c{depth}"], [f"o{depth}"], then_branch=branch(depth - 1), else_branch=branch(depth - 1)
        )
        return helper.make_graph([cond, inner], f"level{depth}", [], [out])

    cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [1]))
    node = helper.make_node("If", ["c"], ["score"], then_branch=branch(2), else_branch=branch(2))
    return _model([cond, node])


def _loop_with_external_in_body() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "B"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [None, 1]),
        ],
        initializer=[_external(numpy_helper.from_array(np.ones((1,), dtype=np.float32), "B"))],
    )
    trip = numpy_helper.from_array(np.array(2, dtype=np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model(
        [_matmul("W"), helper.make_node("Loop", ["trip", "cond", "score0"], ["score"], body=body)],
        [_weights(), trip, cond],
    )


ATTACKS: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "external_initializer": (lambda: _model([_matmul()], [_external(_weights())]), "external data"),
    "external_sparse_initializer": (
        lambda: _model(
            [helper.make_node("Identity", ["S"], ["s"]), _matmul()],
            [_weights()],
            sparse_initializer=[
                helper.make_sparse_tensor(
                    _external(numpy_helper.from_array(np.ones((1,), dtype=np.float32), "S")),
                    numpy_helper.from_array(np.array([0], dtype=np.int64), "S_idx"),
                    [N],
                )
            ],
        ),
        "external data",
    ),
    "external_attribute_tensor": (
        lambda: _model(
            [helper.make_node("Constant", [], ["W"], value=_external(_weights("value"))), _matmul()],
        ),
        "attribute 'value'",
    ),
    "external_data_in_a_nested_if_subgraph": (lambda: _if_with_subgraph(_external(_weights())), "subgraph"),
    "external_data_in_a_loop_body": (_loop_with_external_in_body, "subgraph 'body'"),
    "custom_domain_op": (
        lambda: _model(
            [helper.make_node("FusedMatMul", ["features", "W"], ["score"], domain="com.microsoft")],
            [_weights()],
        ),
        "'com.microsoft' is not allowed",
    ),
    "custom_domain_op_in_a_subgraph": (
        lambda: _if_with_subgraph(_weights(), op_domain="com.attacker"),
        "'com.attacker' is not allowed",
    ),
    "model_local_function": (
        lambda: _with_function(_model([_matmul()], [_weights()])),
        "model-local functions",
    ),
}


def _with_function(model: onnx.ModelProto) -> onnx.ModelProto:
    model.functions.append(
        helper.make_function("", "Evil", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])], [])
    )
    return model


def manifest_for(data: bytes, directory: Path, **onnx_update: object) -> ModelManifest:
    """A manifest (the linear test model's) describing `data` instead."""
    manifest = write_linear_model(directory)
    interface = manifest.onnx.model_copy(update=onnx_update)
    return manifest.model_copy(
        update={"sha256": hashlib.sha256(data).hexdigest(), "length": len(data), "onnx": interface}
    )


def vouched_for(data: bytes, directory: Path) -> Path:
    """A model directory holding `data` as its model and a manifest whose length and sha256 match it."""
    manifest = manifest_for(data, directory)
    (directory / "model.onnx").write_bytes(data)
    (directory / "manifest.json").write_text(manifest.to_json())
    return directory


POLICY = StaticPolicy(min_golden=3)


class TestAttacks:
    @pytest.mark.parametrize("attack", list(ATTACKS))
    def test_an_attack_onnxruntime_would_load_is_refused_before_it(self, tmp_path: Path, attack: str) -> None:
        build, reason = ATTACKS[attack]
        data = build().SerializeToString()
        with pytest.raises(ModelRejectedError, match=reason):
            check_model(data, manifest_for(data, tmp_path), POLICY)

    def test_external_data_from_the_working_directory_reaches_the_scores_unless_checked(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The reproduced leak: loaded from bytes, onnxruntime reads ./secret.bin into the weights.

        (onnxruntime 1.32 does so with graph optimizations off; with them on, its constant folding
        happens to fail on such a tensor, which is no defence.) The same bytes through the agent's
        verifier are refused before onnxruntime sees them.
        """
        monkeypatch.chdir(tmp_path)
        secret = np.arange(1, N + 1, dtype=np.float32)
        (tmp_path / "secret.bin").write_bytes(secret.tobytes())
        data = _model([_matmul()], [_external(_weights())]).SerializeToString()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        leaked = session.run(None, {"features": np.eye(N, dtype=np.float32)})[0][:, 0]
        np.testing.assert_array_equal(secret, leaked)
        with pytest.raises(ModelRejectedError, match="external data is not allowed"):
            ModelVerifier(None).admit(vouched_for(data, tmp_path / "m"))

    @pytest.mark.parametrize(
        "garbage",
        [b"\x00not onnx at all", b"hello, not a model", bytes(range(256)) * 4],
        ids=["nul", "text", "bytes"],
    )
    def test_garbage_protobuf_matching_its_manifest_is_refused_by_the_verifier_naming_why(
        self, tmp_path: Path, garbage: bytes
    ) -> None:
        """Bytes whose length and sha256 the manifest vouches for, but no ONNX: refused before onnxruntime."""
        with pytest.raises(ModelRejectedError, match="not an ONNX model"):
            ModelVerifier(None).admit(vouched_for(garbage, tmp_path / "m"))

    def test_an_operator_outside_allowed_ops_is_refused(self, tmp_path: Path) -> None:
        data = linear_onnx(np.ones((N, 1)), np.zeros(1))
        manifest = manifest_for(data, tmp_path)
        check_model(data, manifest, StaticPolicy(allowed_ops=frozenset({"MatMul", "Add"}), min_golden=3))
        with pytest.raises(ModelRejectedError, match="'Add' is not in allowed_ops"):
            check_model(data, manifest, StaticPolicy(allowed_ops=frozenset({"MatMul"}), min_golden=3))


class TestInterface:
    def test_the_test_model_and_the_bundled_model_pass(self, tmp_path: Path) -> None:
        data = linear_onnx(np.ones((N, 1)), np.zeros(1))
        summary = check_model(data, manifest_for(data, tmp_path), POLICY)
        assert {("", "MatMul"), ("", "Add")} == summary.operators
        bundled = packaged_model()
        manifest = ModelManifest.read(bundled)
        summary = check_model((bundled / "model.onnx").read_bytes(), manifest, POLICY)
        assert ("ai.onnx.ml", "TreeEnsembleClassifier") in summary.operators

    @pytest.mark.parametrize(
        ("update", "reason"),
        [
            ({"input_name": "x"}, "graph inputs \\['features'\\] != manifest input 'x'"),
            ({"input_shape": (None, N + 1)}, f"graph takes {N} features"),
            ({"input_shape": (1, N)}, "batch dimension must be free"),
            ({"input_shape": (None, N, 1)}, "does not match the manifest"),
            ({"outputs": ("score", "extra")}, "graph lacks outputs \\['extra'\\]"),
        ],
    )
    def test_an_interface_other_than_the_manifest_says_is_refused(
        self, tmp_path: Path, update: dict[str, object], reason: str
    ) -> None:
        data = linear_onnx(np.ones((N, 1)), np.zeros(1))
        with pytest.raises(ModelRejectedError, match=reason):
            check_model(data, manifest_for(data, tmp_path, **update), POLICY)

    def test_an_input_of_another_element_type_is_refused(self, tmp_path: Path) -> None:
        graph = helper.make_graph(
            [helper.make_node("Cast", ["features"], ["f"], to=TensorProto.FLOAT), _matmul("W")],
            "g",
            [helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, N])],
            [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
            initializer=[_weights()],
        )
        data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        with pytest.raises(ModelRejectedError, match="is float64, the manifest says float32"):
            check_model(data, manifest_for(data, tmp_path), POLICY)

    def test_a_head_reading_a_column_the_output_lacks_or_a_non_float_output_is_refused(
        self, tmp_path: Path
    ) -> None:
        data = linear_onnx(np.ones((N, 1)), np.zeros(1))
        manifest = manifest_for(data, tmp_path)
        beyond = manifest.model_copy(update={"heads": (manifest.heads[0].model_copy(update={"column": 1}),)})
        with pytest.raises(ModelRejectedError, match="reads column 1 of 'score', which has 1"):
            check_model(data, beyond, POLICY)
        graph = helper.make_graph(
            [_matmul("W"), helper.make_node("Cast", ["score"], ["label"], to=TensorProto.INT64)],
            "g",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, N])],
            [helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1])],
            initializer=[_weights()],
        )
        ints = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        labelled = manifest_for(ints, tmp_path / "b", outputs=("label",))
        labelled = labelled.model_copy(
            update={"heads": (labelled.heads[0].model_copy(update={"output": "label"}),)}
        )
        with pytest.raises(ModelRejectedError, match="scores must be float32 or float64"):
            check_model(ints, labelled, POLICY)


class TestGolden:
    def test_a_manifest_without_golden_vectors_is_refused(self, tmp_path: Path) -> None:
        """The reproduced case: ``golden: []`` passed; now fewer than min_golden_vectors is refused."""
        write_linear_model(tmp_path)
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        manifest["golden"] = []
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelRejectedError, match="0 golden vectors, at least 1 are required"):
            ModelVerifier(None).admit(tmp_path)

    def test_golden_vectors_must_cover_every_scored_output(self, tmp_path: Path) -> None:
        data = linear_onnx(np.ones((N, 1)), np.zeros(1))
        manifest = manifest_for(data, tmp_path)
        golden = tuple(g.model_copy(update={"expected": {}}) for g in manifest.golden)
        with pytest.raises(
            ModelRejectedError, match="golden 0 gives no expected values for outputs \\['score'\\]"
        ):
            check_model(data, manifest.model_copy(update={"golden": golden}), POLICY)
        with pytest.raises(ModelRejectedError, match="3 golden vectors, at least 4"):
            check_model(data, manifest, StaticPolicy(min_golden=4))


class TestWireFormat:
    def test_varints_of_the_full_64_bits_and_overlong_ones(self) -> None:
        assert (300, 2) == read_varint(b"\xac\x02", 0, 2)
        assert ((1 << 64) - 1, 10) == read_varint(b"\xff" * 9 + b"\x01", 0, 10)
        with pytest.raises(WireError, match="longer than 10"):
            read_varint(b"\xff" * 11, 0, 11)
        with pytest.raises(WireError, match="past the end"):
            read_varint(b"\xff\xff", 0, 2)

    def test_a_length_beyond_its_message_and_a_group_are_refused(self) -> None:
        with pytest.raises(WireError, match="claims 100 bytes"):
            list(fields(b"\x0a\x64abc", 0, 5, frozenset({1})))
        with pytest.raises(WireError, match="wire type 3"):
            list(fields(b"\x0b", 0, 1, frozenset({1})))

    def test_every_truncation_of_a_real_model_is_refused_cleanly(self) -> None:
        """Cut anywhere, the bytes raise ModelRejectedError (or, cut at a field boundary, read as less)."""
        data = linear_onnx(np.ones((N, 1)), np.zeros(1))
        reasons = [_refusal(data[:end]) for end in range(len(data))]
        assert all(r is None or r.startswith("not an ONNX model") for r in reasons)
        assert sum(r is not None for r in reasons) > 0.9 * len(data)

    def test_a_long_run_of_unpacked_attribute_floats_is_skipped_quickly(self) -> None:
        """A tree ensemble of a million nodes writes its floats one field each: read in one step per run."""
        node = helper.make_node("Identity", ["features"], ["score"])
        node.attribute.append(helper.make_attribute("padding", [0.5] * 1_000_000))
        data = _model([node]).SerializeToString()
        assert len(data) > 5_000_000
        assert {("", "Identity")} == inspect_model(data).operators


def _refusal(data: bytes) -> str | None:
    """Why `inspect_model` refuses `data`, or None if it reads it; any other exception escapes."""
    try:
        inspect_model(data)
    except ModelRejectedError as exc:
        return str(exc)
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_garbage_bytes_are_refused_or_read_but_never_crash_the_reader(data: bytes) -> None:
    reason = _refusal(data)
    assert reason is None or reason.startswith("not an ONNX model")


_VALID = linear_onnx(np.ones((N, 1)), np.zeros(1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_a_mutated_real_model_is_refused_or_read_but_never_crashes_the_reader(
    flips: list[tuple[int, int]],
) -> None:
    data = bytearray(_VALID)
    for offset, value in flips:
        data[offset] = value
    reason = _refusal(bytes(data))
    assert reason is None or reason.startswith("not an ONNX model")
