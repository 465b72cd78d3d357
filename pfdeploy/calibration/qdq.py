"""Pure graph passes on Q/DQ ONNX graphs: the CPU re-encoding and the INT8-vs-float report.

TensorRT takes symmetric INT8 (zero point 0) on every tensor. ONNX Runtime's x86 kernels want
unsigned activations (u8 x s8 is what VNNI multiplies), and with zero point 0 a ReLU cannot be
folded into the Quantize after it, so a symmetric graph runs `DQ -> Relu -> Q` in float and many
fused int8 kernels are never selected: slower than FP32. `cpu_graph_from_qdq` re-encodes the
TensorRT graph for ONNX Runtime without changing its quantization grid:

- s8 activation with zero point 0 -> u8 with zero point 128 (the same 256 levels, shifted);
- `Q(x) -> DQ -> Relu -> Q(s) -> DQ` -> `Q_u8(x; s, zero point 0) -> DQ` (ReLU folded into
  the Quantize: negative values saturate to 0; the only difference is that the top is 255*s
  instead of 127*s, i.e. values beyond the calibrated range are clipped later).
Weights keep s8 per-channel (u8 x s8).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from pfdeploy._onnxgraph import consumers as users_of
from pfdeploy._onnxgraph import producers

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
WEIGHTED_OPS = {"Conv", "MatMul", "Gemm", "ConvTranspose"}
# ONNX Runtime CPU kernels that compute on 8-bit data (after its QDQ fusions).
ORT_INT8_KERNELS = {
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearConcat",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearReduceMean", "NhwcMaxPool", "QLinearWhere",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
}
SHAPE_OPS = {"Shape", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split", "Gather",
             "Flatten", "Identity", "Cast", "Constant", "ReorderInput", "ReorderOutput"}
FLOAT_REASONS = {
    "LayerNormalization": "kept float: per-token mean/variance are sensitive to INT8 rounding",
    "SkipLayerNormalization": "kept float: per-token mean/variance are sensitive to INT8 rounding",
    "Softmax": "kept float: exponentials need more range than INT8 gives",
    "Erf": "GELU (erf form) kept float: nonlinear, INT8 hurts accuracy",
    "Div": "GELU/attention scaling kept float (elementwise, no INT8 gain)",
    "Mul": "GELU/attention scaling kept float (elementwise, no INT8 gain)",
    "Add": "bias or residual add next to float LayerNorm/GELU: INT8 adds only Q/DQ traffic",
    "ReduceMean": "token/global mean: no INT8 kernel in ONNX Runtime; runs once on the final features",
    "Gemm": "not quantized (excluded or its input is float)",
    "MatMul": "not quantized (excluded or its input is float)",
    "Conv": "not quantized (excluded or its input is float)",
    "Relu": "float between Dequantize and Quantize (symmetric INT8 cannot fold ReLU)",
    "MaxPool": "input not quantized",
    "Gelu": "GELU kept float: nonlinear, INT8 hurts accuracy",
    "BiasGelu": "GELU kept float: nonlinear, INT8 hurts accuracy",
    "QuantizeLinear": "float -> INT8 boundary",
    "DequantizeLinear": "INT8 -> float boundary",
}


def is_quantized(model: onnx.ModelProto) -> bool:
    """True when a graph already holds Quantize/Dequantize or QLinear nodes."""
    return any(n.op_type in QDQ_OPS or n.op_type.startswith("QLinear") or n.op_type in ORT_INT8_KERNELS
               for n in model.graph.node)


def _foldable_relus(graph, producer, consumers) -> list[tuple[onnx.NodeProto, ...]]:
    """(Q1, DQ1, Relu, Q2) chains where the Relu can be folded into Q2."""
    chains = []
    for relu in graph.node:
        if relu.op_type != "Relu":
            continue
        dq1 = producer.get(relu.input[0])
        if dq1 is None or dq1.op_type != "DequantizeLinear" or len(consumers[dq1.output[0]]) != 1:
            continue
        q1 = producer.get(dq1.input[0])
        if q1 is None or q1.op_type != "QuantizeLinear" or len(consumers[q1.output[0]]) != 1:
            continue
        after = consumers.get(relu.output[0], [])
        if len(after) == 1 and after[0].op_type == "QuantizeLinear" and relu.output[0] not in _outputs(graph):
            chains.append((q1, dq1, relu, after[0]))
    return chains


def _outputs(graph) -> set[str]:
    return {o.name for o in graph.output}


def cpu_graph_from_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Re-encode a symmetric-s8 Q/DQ graph as u8 activations for ONNX Runtime CPU (see module doc).

    Returns (new model, {"relu_folded": n, "activations_u8": m}). The input model is not modified.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer, consumers = producers(graph), users_of(graph)
    removed: set[str] = set()
    unsigned_zero: set[str] = set()  # zero-point initializers of ReLU-folded tensors
    chains = _foldable_relus(graph, producer, consumers)
    for q1, dq1, relu, q2 in chains:
        q2.input[0] = q1.input[0]
        removed.update(id_(n) for n in (q1, dq1, relu))
        unsigned_zero.add(q2.input[2])
    new_inits: dict[str, TensorProto] = {}

    def unsigned(zp_name: str) -> str:
        zero = zp_name in unsigned_zero
        key = f"{zp_name}_u8{'z0' if zero else 'z128'}"
        if key not in new_inits:
            old = numpy_helper.to_array(inits[zp_name])
            new_inits[key] = numpy_helper.from_array(np.full(old.shape, 0 if zero else 128, np.uint8), key)
        return key

    converted = 0
    for node in graph.node:
        if id_(node) in removed or node.op_type not in QDQ_OPS or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            continue  # weights stay s8
        zp = inits.get(node.input[2])
        if zp is not None and zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any():
            node.input[2] = unsigned(node.input[2])
            converted += 1
    kept = [n for n in graph.node if id_(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits.values())
    used = {name for n in graph.node for name in n.input}
    live = [i for i in graph.initializer if i.name in used or i.name in _outputs(graph)]
    del graph.initializer[:]
    graph.initializer.extend(live)
    del graph.value_info[:]  # element types changed; ONNX Runtime re-infers them
    return model, {"relu_folded": len(chains), "activations_u8": converted}


def openvino_graph_from_qdq(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The graph OpenVINO should read for a symmetric-s8 Q/DQ graph: its CPU re-encoding, or None
    when that folds no ReLU (then the graph is best read as it is).

    OpenVINO gives a tensor the sign of its Quantize's range, so on the TensorRT graph every
    post-ReLU activation is s8 (0..127): its x86 convolutions then shift their input by 128, and
    each max-pool keeps a separate requantize. Re-encoded (`cpu_graph_from_qdq`: the same grid,
    ReLU folded into an unsigned Quantize) they read u8 as on NNCF's graphs (r50_hybrid, batch 8:
    53.0 vs 44.4 img/s, docs/benchmarks.md); transformers have no ReLU and gained nothing.
    Graphs whose initializers live in external files are left alone (None).
    """
    if not is_quantized(model) or any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
        return None
    reencoded, info = cpu_graph_from_qdq(model)
    return reencoded if info["relu_folded"] else None


def id_(node: onnx.NodeProto) -> str:
    """A stable identity for a node (names may be empty)."""
    return f"{node.name}|{node.op_type}|{','.join(node.output)}"


def placement_report(model: onnx.ModelProto) -> dict[str, Any]:
    """Which op types of a Q/DQ graph take INT8 data and which stay float, with the reason.

    Conv/MatMul/Gemm count as INT8 when every non-constant input comes from a DequantizeLinear
    (INT8 math, as TensorRT and ONNX Runtime read Q/DQ); any other op also needs every output to go
    to a QuantizeLinear (otherwise it computes on dequantized floats). Shape-only ops are listed
    separately. Returns {"int8": {op: n}, "float": {op: n}, "shape": {op: n}, "reasons": {op: why}}.
    """
    graph = model.graph
    inits = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                     for o in n.output}
    producer, consumers = producers(graph), users_of(graph)
    int8, flt, shape = Counter(), Counter(), Counter()
    for node in graph.node:
        if node.op_type in QDQ_OPS or node.op_type == "Constant":
            continue
        if node.op_type in SHAPE_OPS:
            shape[node.op_type] += 1
            continue
        data = [i for i in node.input if i and i not in inits]
        quantized_in = data and all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                                    for i in data)
        quantized_out = all(consumers.get(o) and all(c.op_type == "QuantizeLinear" for c in consumers[o])
                            for o in node.output)
        if quantized_in and (node.op_type in WEIGHTED_OPS or quantized_out):
            int8[node.op_type] += 1
        else:
            flt[node.op_type] += 1
    reasons = {op: FLOAT_REASONS.get(op, "not in the INT8 placement for this family") for op in flt}
    return {"int8": dict(int8), "float": dict(flt), "shape": dict(shape), "reasons": reasons}


def ort_kernel_report(path: str, intra_op_threads: int = 1) -> dict[str, dict[str, int]]:
    """The kernels ONNX Runtime CPU actually runs for a graph after its optimizations, INT8 vs float."""
    from pfdeploy._io import temporary_dir
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    with temporary_dir("ortopt") as tmp:
        optimized = str(tmp / "optimized.onnx")
        ort_session_from_onnx(path, intra_op_threads=intra_op_threads, optimized_model_path=optimized)
        graph = onnx.load(optimized, load_external_data=False).graph
    int8, flt = Counter(), Counter()
    for node in graph.node:
        if node.op_type in ORT_INT8_KERNELS:
            int8[node.op_type] += 1
        elif node.op_type not in SHAPE_OPS:
            flt[node.op_type] += 1
    return {"int8": dict(int8), "float": dict(flt)}
