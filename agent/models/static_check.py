"""Static checks of an ONNX model's bytes, before onnxruntime sees them.

`inspect_model` walks the ``ModelProto`` with `agent.models.protowire` (the agent never
imports the onnx package) and collects what the checks need; `check_model` then refuses,
with `ModelRejectedError` naming the reason:

- bytes that are not a well-formed ModelProto, or hold no graph;
- **external data anywhere**: a tensor with ``data_location = EXTERNAL`` or ``external_data``
  entries, among the initializers, the sparse initializers, a node attribute's tensors, or in
  any subgraph of ``If``/``Loop``/``Scan`` at any depth. onnxruntime resolves such a tensor
  against the working directory when a model is loaded from bytes, which turns a model into a
  file reader;
- model-local functions and training information (an inference model needs neither, and both
  would hide nodes from the operator check);
- an operator set or operator outside the allow-list (``agent.model.allowed_op_domains``,
  default the standard domain ``""``/``ai.onnx`` and ``ai.onnx.ml``; optionally
  ``agent.model.allowed_ops``);
- an interface other than the manifest's: exactly one graph input (initializers aside), named
  as the manifest says, of element type float32, with the manifest's rank, a free batch
  dimension and ``n_features`` (the feature spec's) as its last; every manifest output among the
  graph's outputs, the ones alert heads read of a floating-point type with the columns they read;
- fewer golden vectors than ``agent.model.min_golden_vectors``, or golden vectors that do not
  cover every output an alert head reads.

Subgraphs are followed at most `MAX_GRAPH_DEPTH` deep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from agent.config import DEFAULT_OP_DOMAINS
from agent.contract.manifest import ModelManifest
from agent.errors import ModelRejectedError
from agent.models.protowire import WireError, fields, message, string, varint

MAX_GRAPH_DEPTH: Final = 8

_STANDARD = {"": "", "ai.onnx": ""}  # two names of one domain
_ELEM_FLOAT, _ELEM_DOUBLE = 1, 11
_ELEM_NAMES: Final = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 8: "string", 9: "bool",
                      10: "float16", 11: "float64"}  # fmt: skip

# Field numbers of onnx.proto (onnx/onnx.proto, IR version 10+).
_MODEL = frozenset({1, 7, 8, 20, 25})  # ir_version, graph, opset_import, training_info, functions
_OPSET = frozenset({1, 2})  # domain, version
_GRAPH = frozenset({1, 5, 11, 12, 15})  # node, initializer, input, output, sparse_initializer
_NODE = frozenset({3, 4, 5, 7})  # name, op_type, attribute, domain
_ATTRIBUTE = frozenset({1, 5, 6, 10, 11, 22, 23})  # name, t, g, tensors, graphs, sparse_tensor(s)
_TENSOR = frozenset({8, 13, 14})  # name, external_data, data_location
_SPARSE = frozenset({1, 2})  # values, indices
_VALUE_INFO = frozenset({1, 2})  # name, type
_TYPE = frozenset({1, 4, 5, 7, 8, 9})  # tensor_type, sequence, map, opaque, sparse_tensor, optional
_TENSOR_TYPE = frozenset({1, 2})  # elem_type, shape
_SHAPE = frozenset({1})  # dim
_DIM = frozenset({1, 2})  # dim_value, dim_param
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


@dataclass(frozen=True, slots=True)
class StaticPolicy:
    """What `check_model` allows: operator domains (and optionally operators), golden vectors needed."""

    allowed_domains: frozenset[str] = frozenset(DEFAULT_OP_DOMAINS)
    allowed_ops: frozenset[str] | None = None
    min_golden: int = 1


@dataclass(frozen=True, slots=True)
class ValueInfo:
    """A graph input or output: name, element type (0 when not a tensor) and dimensions.

    A dimension is its fixed size, or None when it is symbolic or unknown; ``dims`` is None
    when the graph gives no shape at all.
    """

    name: str
    elem_type: int
    dims: tuple[int | None, ...] | None


@dataclass(slots=True)
class ModelSummary:
    """What `inspect_model` found in a ModelProto."""

    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    operators: set[tuple[str, str]] = field(default_factory=set)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    initializers: set[str] = field(default_factory=set)
    external: list[str] = field(default_factory=list)
    """Where each tensor with external data sits, e.g. ``initializer 'W'``."""
    functions: int = 0
    training_info: int = 0
    has_graph: bool = False
    nodes: int = 0


def inspect_model(data: bytes) -> ModelSummary:
    """Walk a serialized ModelProto; raises `ModelRejectedError` if it is not a well-formed one."""
    summary = ModelSummary()
    try:
        for f in fields(data, 0, len(data), _MODEL):
            if f.number == 1:
                summary.ir_version = varint(f)
            elif f.number == 8:
                domain, version = "", 0
                start, end = message(f)
                for g in fields(data, start, end, _OPSET):
                    if g.number == 1:
                        domain = string(data, g)
                    else:
                        version = varint(g)
                summary.opsets[domain] = version
            elif f.number == 7:
                summary.has_graph = True
                _graph(data, *message(f), summary, "graph", depth=0, top=True)
            elif f.number == 20:
                summary.training_info += 1
            else:
                summary.functions += 1
    except WireError as exc:
        raise ModelRejectedError(f"not an ONNX model: {exc}") from None
    return summary


def check_model(data: bytes, manifest: ModelManifest, policy: StaticPolicy) -> ModelSummary:
    """Inspect `data` and apply every check of the module docstring; returns the summary."""
    label = manifest.label
    summary = inspect_model(data)
    if not summary.has_graph:
        raise ModelRejectedError(f"{label}: not an ONNX model: it holds no graph")
    if summary.external:
        raise ModelRejectedError(f"{label}: external data is not allowed: {', '.join(summary.external[:3])}")
    if summary.functions or summary.training_info:
        raise ModelRejectedError(f"{label}: model-local functions and training information are not allowed")
    allowed = {_STANDARD.get(d, d) for d in policy.allowed_domains}
    for domain in sorted(summary.opsets):
        if _STANDARD.get(domain, domain) not in allowed:
            raise ModelRejectedError(f"{label}: operator set domain {domain!r} is not allowed")
    for domain, op in sorted(summary.operators):
        if _STANDARD.get(domain, domain) not in allowed:
            raise ModelRejectedError(f"{label}: operator {op!r} of domain {domain!r} is not allowed")
        if policy.allowed_ops is not None and op not in policy.allowed_ops:
            raise ModelRejectedError(f"{label}: operator {op!r} is not in allowed_ops")
    _check_interface(summary, manifest)
    _check_golden(manifest, policy.min_golden)
    return summary


def _check_interface(summary: ModelSummary, manifest: ModelManifest) -> None:
    label, onnx = manifest.label, manifest.onnx
    n_features = manifest.feature_spec.n_features
    inputs = [i for i in summary.inputs if i.name not in summary.initializers]
    if [i.name for i in inputs] != [onnx.input_name]:
        raise ModelRejectedError(
            f"{label}: graph inputs {[i.name for i in inputs]} != manifest input {onnx.input_name!r}"
        )
    (graph_input,) = inputs
    if graph_input.elem_type != _ELEM_FLOAT:
        raise ModelRejectedError(
            f"{label}: input {onnx.input_name!r} is {_elem_name(graph_input.elem_type)}, the manifest "
            f"says {onnx.input_dtype}"
        )
    dims = graph_input.dims
    if dims is None or len(dims) != len(onnx.input_shape) or len(dims) != 2:
        raise ModelRejectedError(
            f"{label}: input shape {_shape(dims)} does not match the manifest's {list(onnx.input_shape)}"
        )
    if dims[0] is not None or onnx.input_shape[0] is not None:
        raise ModelRejectedError(f"{label}: the input's batch dimension must be free, not {dims[0]}")
    if dims[1] != n_features or onnx.input_shape[1] != n_features:
        raise ModelRejectedError(
            f"{label}: graph takes {dims[1]} features (manifest {onnx.input_shape[1]}), "
            f"the feature spec makes {n_features}"
        )
    outputs = {o.name: o for o in summary.outputs}
    missing = [name for name in onnx.outputs if name not in outputs]
    if missing:
        raise ModelRejectedError(f"{label}: graph lacks outputs {missing}")
    for head in manifest.heads:
        out = outputs[head.output]
        if out.elem_type not in (_ELEM_FLOAT, _ELEM_DOUBLE):
            raise ModelRejectedError(
                f"{label}: output {head.output!r} is {_elem_name(out.elem_type)}; "
                "scores must be float32 or float64"
            )
        if out.dims is None:
            continue
        if len(out.dims) not in (1, 2) or out.dims[0] is not None:
            raise ModelRejectedError(
                f"{label}: output {head.output!r} has shape {_shape(out.dims)}, not (n, k)"
            )
        columns = out.dims[1] if len(out.dims) == 2 else 1
        if columns is not None and head.column >= columns:
            raise ModelRejectedError(
                f"{label}: head {head.component}/{head.failure_mode} reads column {head.column} of "
                f"{head.output!r}, which has {columns}"
            )


def _check_golden(manifest: ModelManifest, minimum: int) -> None:
    label = manifest.label
    if len(manifest.golden) < minimum:
        raise ModelRejectedError(
            f"{label}: {len(manifest.golden)} golden vectors, at least {minimum} are required "
            "(min_golden_vectors)"
        )
    scored = {head.output for head in manifest.heads}
    for i, golden in enumerate(manifest.golden):
        uncovered = sorted(scored - set(golden.expected))
        if uncovered:
            raise ModelRejectedError(f"{label}: golden {i} gives no expected values for outputs {uncovered}")


def _graph(
    data: bytes, start: int, end: int, summary: ModelSummary, where: str, *, depth: int, top: bool
) -> None:
    if depth > MAX_GRAPH_DEPTH:
        raise WireError(f"subgraphs nested deeper than {MAX_GRAPH_DEPTH}")
    for f in fields(data, start, end, _GRAPH):
        if f.number == 1:
            summary.nodes += 1
            _node(data, *message(f), summary, f"{where} node {summary.nodes}", depth)
        elif f.number == 5:
            name = _tensor(data, *message(f), summary, f"{where} initializer")
            if top:
                summary.initializers.add(name)
        elif f.number == 15:
            _sparse(data, *message(f), summary, f"{where} sparse initializer")
        elif top:
            info = _value_info(data, *message(f))
            (summary.inputs if f.number == 11 else summary.outputs).append(info)


def _node(data: bytes, start: int, end: int, summary: ModelSummary, where: str, depth: int) -> None:
    op, domain, name = "", "", ""
    attributes: list[tuple[int, int]] = []
    for f in fields(data, start, end, _NODE):
        if f.number == 3:
            name = string(data, f)
        elif f.number == 4:
            op = string(data, f)
        elif f.number == 7:
            domain = string(data, f)
        else:
            attributes.append(message(f))
    summary.operators.add((domain, op))
    where = f"{where} ({op}{f' {name!r}' if name else ''})"
    for attr_start, attr_end in attributes:
        _attribute(data, attr_start, attr_end, summary, where, depth)


def _attribute(data: bytes, start: int, end: int, summary: ModelSummary, where: str, depth: int) -> None:
    name = ""
    for f in fields(data, start, end, _ATTRIBUTE):
        if f.number == 1:
            name = string(data, f)
            continue
        inner = f"attribute {name!r} of {where}"
        if f.number in (5, 10):
            _tensor(data, *message(f), summary, inner)
        elif f.number in (6, 11):
            _graph(data, *message(f), summary, f"subgraph {name!r} of {where}", depth=depth + 1, top=False)
        else:
            _sparse(data, *message(f), summary, inner)


def _tensor(data: bytes, start: int, end: int, summary: ModelSummary, where: str) -> str:
    name, external = "", False
    for f in fields(data, start, end, _TENSOR):
        if f.number == 8:
            name = string(data, f)
        elif f.number == 13 or varint(f) == _EXTERNAL:
            external = True
    if external:
        summary.external.append(f"{where} {name!r}")
    return name


def _sparse(data: bytes, start: int, end: int, summary: ModelSummary, where: str) -> None:
    for f in fields(data, start, end, _SPARSE):
        _tensor(data, *message(f), summary, f"{where} ({'values' if f.number == 1 else 'indices'})")


def _value_info(data: bytes, start: int, end: int) -> ValueInfo:
    name, elem_type, dims = "", 0, None
    for f in fields(data, start, end, _VALUE_INFO):
        if f.number == 1:
            name = string(data, f)
            continue
        for t in fields(data, *message(f), _TYPE):
            if t.number != 1:
                continue  # a sequence, map or other non-tensor type: elem_type stays 0
            for g in fields(data, *message(t), _TENSOR_TYPE):
                if g.number == 1:
                    elem_type = varint(g)
                else:
                    dims = _dims(data, *message(g))
    return ValueInfo(name, elem_type, dims)


def _dims(data: bytes, start: int, end: int) -> tuple[int | None, ...]:
    dims: list[int | None] = []
    for f in fields(data, start, end, _SHAPE):
        value: int | None = None
        for g in fields(data, *message(f), _DIM):
            value = varint(g) if g.number == 1 else None
        dims.append(value)
    return tuple(dims)


def _elem_name(elem_type: int) -> str:
    return _ELEM_NAMES.get(elem_type, f"element type {elem_type}" if elem_type else "not a tensor")


def _shape(dims: tuple[int | None, ...] | None) -> str:
    return "unknown" if dims is None else str(["?" if d is None else d for d in dims])
