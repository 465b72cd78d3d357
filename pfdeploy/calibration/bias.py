"""Bias correction of a Q/DQ graph: remove the mean shift INT8 rounding adds to each layer's output.

For every Conv/Gemm (bias input) and MatMul followed by a bias Add whose input and weight are
quantized, the layer is run twice on the FP32 graph's own input tensor: as it is, and with that
input passed through its Quantize/Dequantize and its dequantized INT8 weights. The difference of
the per-channel means over the calibration images is added to the float bias (NNCF's "fast bias
correction"; the layer's error is measured on FP32 inputs, so one run serves every layer). Only
bias values change: the graph keeps its nodes and TensorRT validity.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pfdeploy._onnxgraph import consumers as users_of
from pfdeploy._onnxgraph import producers

log = logging.getLogger(__name__)

PREFIX = "pfdeploy_bc_"
BATCH = 16


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _dequantized_weight(inits: dict[str, onnx.TensorProto], dq: onnx.NodeProto) -> np.ndarray:
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 else 0 * scale
    if scale.ndim:
        shape = [1] * q.ndim
        shape[_attr(dq, "axis", 1) % q.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def _bias_of(node: onnx.NodeProto, inits, users) -> tuple[str, int] | None:
    """(bias initializer, channel axis of the output: 1 for Conv, -1 otherwise) or None."""
    if node.op_type in ("Conv", "Gemm"):
        if len(node.input) > 2 and node.input[2] in inits:
            return node.input[2], 1 if node.op_type == "Conv" else -1
        return None
    after = users.get(node.output[0], [])
    if node.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add":
        other = [i for i in after[0].input if i != node.output[0]]
        if len(other) == 1 and other[0] in inits and len(inits[other[0]].dims) == 1:
            return other[0], -1
    return None


def correction_layers(qdq: onnx.ModelProto) -> list[dict[str, Any]]:
    """The layers of a Q/DQ graph whose input and weight are quantized and whose bias is a float initializer."""
    graph = qdq.graph
    inits = {i.name: i for i in graph.initializer}
    made, users = producers(graph), users_of(graph)
    layers = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        dq_a, dq_w = made.get(node.input[0]), made.get(node.input[1])
        if not (dq_a and dq_w and dq_a.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        q_a = made.get(dq_a.input[0])
        if q_a is None or q_a.op_type != "QuantizeLinear" or dq_w.input[0] not in inits:
            continue
        bias = _bias_of(node, inits, users)
        if bias is None or len(users.get(bias[0], [])) != 1:
            continue  # no float bias, or one shared with another layer
        layers.append({"node": node, "input": q_a.input[0], "q": q_a, "dq": dq_a, "weight_dq": dq_w,
                       "bias": bias[0], "axis": bias[1]})
    return layers


def _probe_model(fp32: onnx.ModelProto, qdq: onnx.ModelProto,
                 layers: list[dict[str, Any]]) -> tuple[onnx.ModelProto, list[tuple[dict[str, Any], str, str]]]:
    """The FP32 graph plus, per layer, a quantized copy reading the FP32 input: (model, [(layer, FP32 output,
    quantized copy's output)]) for the layers found in the FP32 graph under the same name and input."""
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    qinits = {i.name: i for i in qdq.graph.initializer}
    fp_out = {n.name: n for n in model.graph.node}
    pairs = []
    for index, layer in enumerate(layers):
        node, tag = layer["node"], f"{PREFIX}{index}_"
        original = fp_out.get(node.name)
        if original is None or original.input[0] != layer["input"]:
            continue
        qparams = []  # the quantizer's scale and, where it has one (it is optional), its zero point
        for index, tensor in enumerate(layer["q"].input[1:3]):
            if not tensor:
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(qinits[tensor])
            copy.name = f"{tag}qparam{index}"
            qparams.append(copy.name)
            model.graph.initializer.append(copy)
        weight = numpy_helper.from_array(_dequantized_weight(qinits, layer["weight_dq"]), tag + "w")
        model.graph.initializer.append(weight)
        q_attrs = {a.name: helper.get_attribute_value(a) for a in layer["q"].attribute}
        dq_attrs = {a.name: helper.get_attribute_value(a) for a in layer["dq"].attribute}
        model.graph.node.extend([
            helper.make_node("QuantizeLinear", [layer["input"], *qparams], [tag + "q"], name=tag + "Q", **q_attrs),
            helper.make_node("DequantizeLinear", [tag + "q", *qparams], [tag + "x"], name=tag + "DQ", **dq_attrs),
        ])
        probe = onnx.NodeProto()
        probe.CopyFrom(original)
        probe.name = tag + "layer"
        probe.input[0], probe.input[1] = tag + "x", tag + "w"
        del probe.output[:]
        probe.output.append(tag + "y")
        model.graph.node.append(probe)
        pairs.append((layer, original.output[0], tag + "y"))
    return model, pairs


def bias_corrected(qdq: onnx.ModelProto, fp32: onnx.ModelProto, input_name: str, inputs: np.ndarray,
                   fixed_batch: int | None, folder: Path) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """A copy of `qdq` whose float biases absorb each layer's mean INT8 error on `inputs` (see module doc);
    a graph of `fixed_batch` runs in batches of that size, the filling of the last one not counted."""
    from pfdeploy.calibration.activations import (
        padded_batches,
        run_batches,
        save_for_session,
        session_for,
        with_outputs,
    )

    layers = correction_layers(qdq)
    probe, pairs = _probe_model(fp32, qdq, layers)
    if not pairs:
        return qdq, []
    names = [n for _, ref, got in pairs for n in (ref, got)]
    session = session_for(save_for_session(with_outputs(probe, names), folder / "bias_probe.onnx"))
    sums: dict[str, np.ndarray] = {}
    weights = {"images": 0}

    def visit(values: dict[str, np.ndarray]) -> None:
        images = len(next(iter(values.values())))
        weights["images"] += images
        for layer, ref, got in pairs:
            axis = layer["axis"] % values[ref].ndim
            other = tuple(a for a in range(values[ref].ndim) if a != axis)
            delta = (values[ref] - values[got]).astype(np.float64).mean(axis=other) * images
            sums[ref] = sums.get(ref, 0) + delta

    batches, real = padded_batches(inputs, fixed_batch, BATCH)
    run_batches(session, input_name, batches, names, visit, real)
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    inits = {i.name: i for i in out.graph.initializer}
    report = []
    for layer, ref, _ in pairs:
        shift = (sums[ref] / weights["images"]).astype(np.float32)
        bias = numpy_helper.to_array(inits[layer["bias"]])
        inits[layer["bias"]].CopyFrom(numpy_helper.from_array((bias + shift).astype(bias.dtype), layer["bias"]))
        scale = float(np.abs(bias).max()) or 1.0
        report.append({"node": layer["node"].name, "max_shift": float(np.abs(shift).max()),
                       "relative": float(np.abs(shift).max() / scale)})
    log.info("bias correction of %d layers", len(report))
    return out, report
