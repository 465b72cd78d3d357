"""Will TensorRT's ONNX parser take this graph? A static check against its documented operator table.

ONNX Runtime runs graphs that TensorRT's parser rejects (an INT32 quantized bias behind a
DequantizeLinear, a Transpose on a UINT8 input, a com.microsoft op). Without TensorRT, the next best
thing is TensorRT's own documentation: `trt_violations` checks a graph against the operator table of a
TensorRT release (trt_matrix.py, data under engines/data/) and returns every node that breaks it:

- domain: only default-domain (ai.onnx) ops; opset: the model's opset in the table's range;
- unsupported-op: every op listed as supported;
- input-type / dq-input: each op's data inputs (those the ONNX schema types with its `T` variable,
  else with its first input's) of a type the table lists for it, types from ONNX shape inference
  (DequantizeLinear takes INT8/FP8/INT4 only: an INT32 quantized bias is rejected); Cast's `to` too;
- uint8-io: UINT8 only as a network input consumed by Cast, or a network output;
- quantized-type: INT8/INT4/FP8 tensors only from QuantizeLinear (or constant weights) into DequantizeLinear;
- zero-point: QuantizeLinear/DequantizeLinear zero points constant and 0;
- uint8-cast: a Cast from UINT8 only to FP32/FP16, a Cast to UINT8 only from them (NvInferRuntimeBase.h);
- per-channel-qdq: a QuantizeLinear/DequantizeLinear with a 1-D (per-channel) scale only over weights, its
  input rooted at a constant (NvInfer.h); these two apply when the table's rules state them;
- graph-order: every node reads only graph inputs, initializers and outputs of earlier nodes (no cycle,
  no self-loop, nothing dangling), as ONNX requires; a graph that breaks it is reported with that alone;
- restrictions the table states that a graph shows statically (pooling dilations 1 and 2D/3D,
  no MaxPool Indices, LayerNormalization's Y output only, constant `axes`, Constant attributes,
  Dropout inference-only, TopK sorted with K < 3840, constant OneHot depth): each applies only when
  the table's restriction text for that op states it, so a newer table that lifts it lifts the check.

What it cannot prove: that TensorRT has a fast kernel (or any tactic) for the layer on a given GPU,
the accuracy of the engine, or the absence of parser bugs. No TensorRT is imported here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from pfdeploy._onnxfile import load_onnx
from pfdeploy.engines.trt_matrix import OperatorMatrix, load_matrix
from pfdeploy.errors import PfdeployError

log = logging.getLogger(__name__)

DEFAULT_DOMAINS = ("", "ai.onnx")
FIX = "pass an ONNX file made by `pfdeploy export` or `pfdeploy quantize`"
QUANTIZED_TYPES = ("INT8", "INT4", "FP8")
POOLS = ("MaxPool", "AveragePool", "LpPool")
TOPK_MAX_K = 3840
#: Every rule the check applies, with what it asks of the graph.
RULES = {
    "opset": "the model's ai.onnx opset lies in the table's opset range",
    "domain": "only default-domain (ai.onnx) operators",
    "unsupported-op": "every operator is listed as supported",
    "input-type": "each data input has a type the table lists for the operator (Cast: its `to` type too)",
    "dq-input": "DequantizeLinear inputs are INT8/FP8/INT4 (an INT32 quantized bias is rejected)",
    "uint8-io": "UINT8 only as a network input converted by Cast, or a network output",
    "quantized-type": "INT8/INT4/FP8 only from QuantizeLinear (or constant weights) into DequantizeLinear",
    "zero-point": "QuantizeLinear/DequantizeLinear zero points are constant zeros",
    "pool-dilations": "pooling `dilations` empty or all ones",
    "pool-rank": "2D or 3D pooling only",
    "pool-indices": "no MaxPool `Indices` output",
    "layernorm-outputs": "LayerNormalization: only the first output `Y`",
    "constant-input": "`axes`/`axis`/`depth`/K/training inputs are constants (initializers)",
    "constant-attribute": "Constant: no `sparse_value`, `value_string`, `value_strings`",
    "dropout-training": "Dropout: training mode constant False",
    "topk": "TopK: `sorted` 1 and K < 3840",
    "uint8-cast": "Cast from UINT8 only to FP32/FP16, Cast to UINT8 only from FP32/FP16 (NvInferRuntimeBase.h)",
    "per-channel-qdq": "per-channel (1-D scale) Q/DQ only over weights: input rooted at a constant (NvInfer.h)",
    "graph-order": "nodes read only graph inputs, initializers and earlier nodes' outputs: no cycle, as ONNX requires",
}
#: Rules that come from TensorRT's headers rather than its operator table: applied when the table's `rules`
#: state them (each entry: a phrase of the rule text, the rule).
HEADER_RULES = (("kUINT8 conversions are only supported for {kFLOAT, kHALF}", "uint8-cast"),
                ("Per-channel quantization is supported only for weight inputs", "per-channel-qdq"))
UINT8_PARTNERS = ("FP32", "FP16")
#: Ops a weight may pass through on its way from its initializer to a per-channel Q/DQ (TensorRT folds them).
CONSTANT_PRESERVING = ("QuantizeLinear", "Cast", "Identity", "Transpose", "Reshape", "Flatten", "Squeeze",
                       "Unsqueeze")
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "DOUBLE", TensorProto.INT32: "INT32", TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL",
}
for _fp8 in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"):
    if hasattr(TensorProto, _fp8):
        _TYPE_NAMES[getattr(TensorProto, _fp8)] = "FP8"
if hasattr(TensorProto, "INT4"):
    _TYPE_NAMES[TensorProto.INT4] = "INT4"
DQ_CITATION = ("TensorRT rejects it: 'only activation types allowed as input to this layer' "
               "(onnx/onnx-tensorrt#850); keep biases in float")


def type_name(elem_type: int) -> str:
    """The table's name of an ONNX element type (FLOAT -> FP32); other types keep ONNX's name."""
    return _TYPE_NAMES.get(elem_type) or TensorProto.DataType.Name(elem_type)


@dataclass(frozen=True)
class Violation:
    """One node (or the model, node '') breaking one rule of the table."""

    node: str
    op_type: str
    rule: str
    detail: str

    def __str__(self) -> str:
        where = f"node {self.node!r} ({self.op_type or 'no op_type'})" if self.node else "model"
        return f"{where} breaks {self.rule}: {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CheckReport:
    """The check of one file against one table."""

    path: str
    trt_version: str
    source: str
    nodes: int
    violations: tuple[Violation, ...]

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {"file": self.path, "trt_version": self.trt_version, "source": self.source, "nodes": self.nodes,
                "passed": self.passed, "violations": [v.to_dict() for v in self.violations]}

    def format(self) -> str:
        """A PASS/FAIL line, then one line per violation."""
        head = f"{self.path}: {'PASS' if self.passed else 'FAIL'} against TensorRT {self.trt_version}'s " \
               f"documented ONNX support ({self.nodes} nodes"
        if self.passed:
            return head + ")"
        return "\n".join([head + f", {len(self.violations)} violation(s))", *(f"  {v}" for v in self.violations)])


class _Graph:
    """Types, constants, producers and consumers of a shape-inferred graph."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
        self.types: dict[str, int] = {}
        self.ranks: dict[str, int] = {}
        for value in [*graph.input, *graph.output, *graph.value_info]:
            tensor = value.type.tensor_type
            if tensor.elem_type:
                self.types[value.name] = tensor.elem_type
            if tensor.HasField("shape"):
                self.ranks[value.name] = len(tensor.shape.dim)
        self.constants: dict[str, onnx.TensorProto | None] = {}
        for init in graph.initializer:
            self.types[init.name] = init.data_type
            self.ranks[init.name] = len(init.dims)
            self.constants[init.name] = init
        self.inputs = {v.name for v in graph.input} - set(self.constants)
        self.outputs = {v.name for v in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, slot))
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                self.constants[node.output[0]] = value
                if value is not None:
                    self.types.setdefault(node.output[0], value.data_type)

    def type_of(self, name: str) -> str | None:
        return type_name(self.types[name]) if name in self.types else None

    def inference_failed_at(self, name: str) -> bool:
        """True when `name`'s type is unknown and not just because an input of its producer is (a
        non-ai.onnx producer, or one downstream of such, is reported once, by the domain rule)."""
        producer = self.producer.get(name)
        if producer is None:
            return True
        if producer.domain not in DEFAULT_DOMAINS:
            return False
        return all(i in self.types for i in producer.input if i)

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or `#<index>` for an unnamed node."""
    return node.name or f"#{index}"


def _schema(node: onnx.NodeProto, opset: int | None):
    try:
        return onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version(), "")
    except Exception:  # an op unknown to this onnx version at that opset: fall back to input 0
        return None


def data_inputs(node: onnx.NodeProto, opset: int | None) -> list[str]:
    """Inputs the table's type column is about: those typed by the schema's `T` variable (else by the
    type variable of the first input); just the first input when the schema is unknown."""
    schema = _schema(node, opset)
    names = [n for n in node.input]
    if schema is None or not schema.inputs:
        return names[:1] if names and names[0] else []
    formal = [p.type_str for p in schema.inputs]
    variables = [t for t in formal if not t.startswith("tensor(")]
    if not variables:
        return []
    wanted = "T" if "T" in variables else formal[0]
    last_variadic = schema.inputs[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
    picked = []
    for slot, name in enumerate(names):
        param = formal[min(slot, len(formal) - 1)] if last_variadic or slot < len(formal) else None
        if name and param == wanted:
            picked.append(name)
    return picked


def _input_named(node: onnx.NodeProto, opset: int | None, wanted: str) -> str | None:
    schema = _schema(node, opset)
    if schema is None:
        return None
    for slot, param in enumerate(schema.inputs):
        if param.name == wanted and slot < len(node.input) and node.input[slot]:
            return node.input[slot]
    return None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


# --- restrictions: (phrase of the table's restriction text, rule, check) -------------------------------


def _dilations(node, g: _Graph) -> Iterator[str]:
    dilations = _attr(node, "dilations")
    if dilations and any(d != 1 for d in dilations):
        yield f"dilations {list(dilations)}; TensorRT pools with dilation 1 only"


def _pool_rank(node, g: _Graph) -> Iterator[str]:
    rank = g.ranks.get(node.input[0])
    if rank is not None and rank not in (4, 5):
        yield f"input of rank {rank}: TensorRT pools 2D or 3D (rank 4 or 5) inputs only"


def _indices(node, g: _Graph) -> Iterator[str]:
    if len(node.output) > 1 and node.output[1]:
        yield f"uses the Indices output {node.output[1]!r}, which TensorRT does not produce"


def _first_output_only(node, g: _Graph) -> Iterator[str]:
    extra = [o for o in node.output[1:] if o]
    if extra:
        yield f"uses output(s) {extra} besides Y; TensorRT produces only Y"


def _constant_input(name: str) -> Callable:
    def check(node, g: _Graph) -> Iterator[str]:
        value = _input_named(node, g.opset, name)
        if value is not None and value not in g.constants:
            yield f"input {name!r} ({value!r}) is computed at run time; TensorRT needs it as an initializer"
    return check


def _constant_attributes(node, g: _Graph) -> Iterator[str]:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    if bad:
        yield f"attribute {bad[0]!r} is not supported by TensorRT"


def _dropout_inference(node, g: _Graph) -> Iterator[str]:
    training = _input_named(node, g.opset, "training_mode")
    if training is None:
        return
    value = g.constant(training)
    if value is None:
        yield f"training_mode {training!r} is not an initializer"
    elif bool(np.asarray(value).any()):
        yield "training_mode is True; TensorRT runs Dropout in inference mode only"


def _topk(node, g: _Graph) -> Iterator[str]:
    if _attr(node, "sorted", 1) != 1:
        yield "sorted=0; TensorRT needs sorted=1"
    k = g.constant(node.input[1]) if len(node.input) > 1 else None
    if k is not None and int(np.asarray(k).max()) >= TOPK_MAX_K:
        yield f"K={int(np.asarray(k).max())}; TensorRT needs K < {TOPK_MAX_K}"


RESTRICTIONS: tuple[tuple[str, str, Callable], ...] = (
    ("`dilations` must be empty or all ones", "pool-dilations", _dilations),
    ("2d or 3d pooling only", "pool-rank", _pool_rank),
    ("`indices` output tensor unsupported", "pool-indices", _indices),
    ("only the first output `y` is supported", "layernorm-outputs", _first_output_only),
    ("`axes` must be an initializer", "constant-input", _constant_input("axes")),
    ("`axes` must be a constant tensor", "constant-input", _constant_input("axes")),
    ("`axis` must be an initializer", "constant-input", _constant_input("axis")),
    ("`depth` must be a build-time constant", "constant-input", _constant_input("depth")),
    ("`sparse_value`, `value_string`, and `value_strings` attributes are unsupported", "constant-attribute",
     _constant_attributes),
    ("must be an initializer and evaluate to false", "dropout-training", _dropout_inference),
    ("`sorted` must be 1", "topk", _topk),
)


def checked_restrictions(restrictions: str) -> list[tuple[str, Callable]]:
    """(rule, check) of each RESTRICTIONS phrase that the table's restriction text states."""
    text = restrictions.lower()
    return [(rule, check) for phrase, rule, check in RESTRICTIONS if phrase in text]


# --- the rules ------------------------------------------------------------------------------------


def _flow_violations(g: _Graph, node) -> Iterator[tuple[str, str, str]]:
    """(rule, tensor, detail) for UINT8 and INT8/INT4/FP8 tensors this node consumes or produces.

    A tensor made inside the network is reported once, at its producer, not again at its consumers.
    """
    for slot, name in enumerate(node.input):
        kind = g.type_of(name) if name else None
        made_inside = name in g.producer and name not in g.constants
        if kind == "UINT8" and not made_inside and (node.op_type != "Cast" or name in g.constants):
            where = "network input" if name in g.inputs else "constant"
            yield "uint8-io", name, (f"consumes UINT8 {where} {name!r}; TensorRT takes UINT8 only as a network "
                                     "input converted by Cast before any other layer")
        if kind in QUANTIZED_TYPES:
            into_dq = node.op_type == "DequantizeLinear" and slot in (0, 2)
            if not (into_dq or (node.op_type == "QuantizeLinear" and slot == 2)):
                yield "quantized-type", name, (f"consumes {kind} tensor {name!r}; TensorRT takes {kind} only "
                                               "into DequantizeLinear")
            elif slot == 0 and not made_inside and name not in g.constants:
                yield "quantized-type", name, (f"consumes {kind} network input {name!r}; {kind} tensors come "
                                               "from QuantizeLinear or constant weights")
    for name in node.output:
        kind = g.type_of(name) if name else None
        if kind == "UINT8" and (name not in g.outputs or node.op_type != "Cast"):
            yield "uint8-io", name, (f"produces UINT8 tensor {name!r}; TensorRT takes UINT8 only as a network "
                                     "input or a network output made by Cast")
        elif kind in QUANTIZED_TYPES and node.op_type != "QuantizeLinear":
            yield "quantized-type", name, (f"produces {kind} tensor {name!r}; only QuantizeLinear makes {kind} "
                                           "tensors in TensorRT")


def _type_violations(g: _Graph, node, row, skip: set[str]) -> Iterator[tuple[str, str]]:
    rule = "dq-input" if node.op_type == "DequantizeLinear" else "input-type"
    allowed = ", ".join(sorted(row.types)) or "none"
    for name in data_inputs(node, g.opset):
        if name in skip:
            continue
        kind = g.type_of(name)
        if kind is None:
            if g.inference_failed_at(name):
                yield rule, f"the type of input {name!r} is unknown after ONNX shape inference"
                break
        elif kind not in row.types:
            extra = f"; {DQ_CITATION}" if node.op_type == "DequantizeLinear" and kind == "INT32" else ""
            yield rule, f"input {name!r} is {kind}; TensorRT's {node.op_type} takes {allowed}{extra}"
            break  # one per node: the others share its type variable
    if node.op_type == "Cast":
        target = type_name(_attr(node, "to", 0))
        if target not in row.types:
            yield "input-type", f"casts to {target}; TensorRT's Cast takes {allowed}"
    if node.op_type == "Constant":
        kind = g.type_of(node.output[0])
        if kind is not None and kind not in row.types:
            yield "input-type", f"holds a {kind} value; TensorRT's Constant takes {allowed}"


def _zero_point(g: _Graph, node) -> Iterator[str]:
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
        return
    zp = node.input[2]
    if zp not in g.constants:
        yield f"zero point {zp!r} is computed at run time; TensorRT needs a constant 0"
        return
    value = g.constant(zp)
    if value is not None and np.asarray(value).astype(np.float64).any():
        yield f"zero point {zp!r} is not 0 (max {np.asarray(value).max()}); TensorRT's Q/DQ are symmetric"


def _uint8_cast(g: _Graph, node) -> Iterator[str]:
    if node.op_type != "Cast" or not node.input or not node.input[0]:
        return
    source, target = g.type_of(node.input[0]), type_name(_attr(node, "to", 0))
    if source == "UINT8" and target not in UINT8_PARTNERS:
        yield (f"casts UINT8 to {target}; TensorRT converts UINT8 only to or from FP32 and FP16 "
               "(NvInferRuntimeBase.h, DataType::kUINT8): cast to FLOAT first")
    elif target == "UINT8" and source is not None and source not in UINT8_PARTNERS:
        yield (f"casts {source} to UINT8; TensorRT converts UINT8 only to or from FP32 and FP16 "
               "(NvInferRuntimeBase.h, DataType::kUINT8): cast to FLOAT first")


def rooted_at_constant(g: _Graph, name: str) -> bool:
    """True when `name` is an initializer or Constant, or is computed from one through
    CONSTANT_PRESERVING ops only (a weight: what TensorRT builds as an IConstantLayer)."""
    seen = set()
    while name not in g.constants:
        producer = g.producer.get(name)
        if producer is None or name in seen or producer.op_type not in CONSTANT_PRESERVING or not producer.input:
            return False
        seen.add(name)
        name = producer.input[0]
    return True


def _per_channel_qdq(g: _Graph, node) -> Iterator[str]:
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
        return
    if g.ranks.get(node.input[1]) == 1 and not rooted_at_constant(g, node.input[0]):
        kind = "quantization" if node.op_type == "QuantizeLinear" else "dequantization"
        yield (f"per-channel {kind} (1-D scale {node.input[1]!r}) of {node.input[0]!r}, which is computed at run "
               f"time; TensorRT supports per-channel {kind} only of weights, rooted at a constant (NvInfer.h, "
               f"I{'Quantize' if kind == 'quantization' else 'Dequantize'}Layer): quantize activations per tensor")


HEADER_CHECKS = {"uint8-cast": _uint8_cast, "per-channel-qdq": _per_channel_qdq}


def header_rules(matrix: OperatorMatrix) -> list[str]:
    """The HEADER_RULES that the table's `rules` state (a table without them does not apply them)."""
    text = " ".join(matrix.rules)
    return [rule for phrase, rule in HEADER_RULES if phrase in text]


def order_violations(graph: onnx.GraphProto, outer: frozenset[str] = frozenset(), where: str = "") -> list[Violation]:
    """Nodes that read a tensor no graph input, initializer or earlier node has made: a cycle, a self-loop,
    or a dangling name; also inside subgraphs (If/Loop/Scan bodies, which may read what the enclosing graphs
    made before their node: `outer`). onnx.checker rejects all three ("nodes must be topologically sorted")."""
    made = set(outer) | {v.name for v in graph.input} | {i.name for i in graph.initializer}
    later = {out: node_label(node, i) for i, node in enumerate(graph.node) for out in node.output if out}
    found = []
    for index, node in enumerate(graph.node):
        label = where + node_label(node, index)
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for sub in subgraphs:
                found += order_violations(sub, frozenset(made), f"{label}/{attribute.name}/")
        for name in node.input:
            if not name or name in made:
                continue
            if name in node.output:
                why = f"reads its own output {name!r} (a self-loop)"
            elif name in later:
                why = (f"reads {name!r} before node {later[name]!r} makes it (a cycle, or nodes out of "
                       "topological order)")
            else:
                why = f"reads {name!r}, which no graph input, initializer or node makes"
            found.append(Violation(label, node.op_type, "graph-order", why + "; ONNX requires a graph whose nodes "
                                   "read only what earlier nodes made (onnx.checker.check_model says so too)"))
            break
        made.update(o for o in node.output if o)
    return found


def _node_violations(g: _Graph, matrix: OperatorMatrix, node, label: str) -> Iterator[Violation]:
    if not node.op_type:
        yield Violation(label, "", "unsupported-op", "the node has no op_type (empty); every ONNX node names the "
                        "operator it runs")
        return
    if node.domain not in DEFAULT_DOMAINS:
        yield Violation(label, node.op_type, "domain",
                        f"operator of domain {node.domain!r}; TensorRT's ONNX parser takes ai.onnx operators only")
        return
    row = matrix.op(node.op_type)
    if row is None or not row.supported:
        why = "not in" if row is None else "marked unsupported in"
        yield Violation(label, node.op_type, "unsupported-op",
                        f"{node.op_type} is {why} TensorRT {matrix.version}'s operator table")
        return
    flagged, rules = set(), set()
    for rule, name, detail in _flow_violations(g, node):
        flagged.add(name)
        if rule not in rules:  # one message per node and rule
            rules.add(rule)
            yield Violation(label, node.op_type, rule, detail)
    for rule, detail in _type_violations(g, node, row, flagged):
        yield Violation(label, node.op_type, rule, detail)
    for detail in _zero_point(g, node):
        yield Violation(label, node.op_type, "zero-point", detail)
    for rule, check in checked_restrictions(row.restrictions):
        for detail in check(node, g):
            yield Violation(label, node.op_type, rule, detail)
    for rule in header_rules(matrix):
        for detail in HEADER_CHECKS[rule](g, node):
            yield Violation(label, node.op_type, rule, detail)


def _subgraph_nodes(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for inner in sub.node:
                yield inner
                yield from _subgraph_nodes(inner)


def _typed(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # InferenceError/ValidationError: a graph ONNX itself rejects
        raise PfdeployError(f"ONNX shape inference fails on this graph ({str(exc).splitlines()[0]}); "
                            "fix the graph (onnx.checker.check_model names the problem)") from None


def trt_violations(model: onnx.ModelProto | str | os.PathLike,
                   matrix: OperatorMatrix | str | os.PathLike | None = None) -> list[Violation]:
    """Every way `model` (a ModelProto or an ONNX file) breaks TensorRT's documented ONNX support.

    matrix: an OperatorMatrix, a TensorRT version with a shipped table ("10.1"), a table's JSON path,
    or None for DEFAULT_TRT_VERSION. An empty list means the graph is within the table's support.
    """
    if not isinstance(matrix, OperatorMatrix):
        matrix = load_matrix(matrix)
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model, fix=FIX)
    disordered = order_violations(model.graph)
    if disordered:  # not a valid ONNX graph: types and the other rules would be guesses
        return disordered
    g = _Graph(_typed(model))
    found: list[Violation] = []
    low, high = matrix.opset_range
    if g.opset is None or not low <= g.opset <= high:
        found.append(Violation("", "", "opset", f"ai.onnx opset {g.opset}; TensorRT {matrix.version} parses "
                               f"opsets {low}-{high} (export with --opset {high})"))
    for index, node in enumerate(model.graph.node):
        label = node_label(node, index)
        found.extend(_node_violations(g, matrix, node, label))
        for inner in _subgraph_nodes(node):
            found.extend(v for v in _node_violations(g, matrix, inner, node_label(inner, index))
                         if v.rule in ("domain", "unsupported-op"))
    return found


def check_trt(path: str | os.PathLike, matrix: OperatorMatrix | str | os.PathLike | None = None) -> CheckReport:
    """trt_violations of an ONNX file, as a CheckReport (file, table version and source, violations)."""
    if not isinstance(matrix, OperatorMatrix):
        matrix = load_matrix(matrix)
    model = load_onnx(path, fix=FIX)
    violations = trt_violations(model, matrix)
    return CheckReport(str(path), matrix.version, matrix.source, len(model.graph.node), tuple(violations))


def require_trt_compatible(path: str | os.PathLike,
                           matrix: OperatorMatrix | str | os.PathLike | None = None) -> CheckReport:
    """check_trt, raising a one-line PfdeployError that names the first violating node and rule."""
    report = check_trt(path, matrix)
    if not report.passed:
        more = len(report.violations) - 1
        rest = f" (+{more} more)" if more else ""
        raise PfdeployError(f"{path} is outside TensorRT {report.trt_version}'s ONNX support: "
                            f"{report.violations[0]}{rest}; `pfdeploy check-trt {path}` lists every violation")
    log.info("%s: within TensorRT %s's documented ONNX support (%d nodes)", path, report.trt_version, report.nodes)
    return report
