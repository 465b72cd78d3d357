"""Per-channel scale equalization of an FP32 ONNX graph before INT8 calibration (weights only).

A positive per-channel scale `s` commutes with ReLU, max-pooling, average-pooling (and global
pooling or a token mean over the other axes): `pool(relu(x / s)) = pool(relu(x)) / s`. So dividing
output channel i of a Conv (its weight row and bias) or of a LayerNorm (its scale and bias) by
`s_i`, and multiplying input channel i of every Conv/MatMul/Gemm that reads the result (through
those ops) by `s_i`, leaves the function unchanged, while the activations in between, which INT8
quantizes with one scale per tensor, lose their outlier channels. The parameter-free layers are
where the scale travels: in R50-max/R50-hybrid it crosses the max-pool and avg-pool blocks.

`s_i = (a_i ** alpha / w_i ** (1 - alpha))`, rounded to a power of two (then every product is
exact in floating point and the FP32 logits are unchanged to the last bit, except where a
rescaled value leaves float32's normal range), where `a_i` is the largest |activation| of channel
i over the rescaled tensors on the calibration images and `w_i` the largest |weight| of input
channel i over the readers: the balance SmoothQuant strikes between per-tensor activations and
per-output-channel weights (alpha 0.5 migrates half of the range, in log terms, to the weights).
No op is added or removed, so the Q/DQ placement, the TensorRT check and the INT8 speed are
those of the graph without equalization.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pfdeploy._onnxgraph import consumers as users_of
from pfdeploy._onnxgraph import graphs_of

log = logging.getLogger(__name__)

ALPHA = 0.5
MAX_LOG2_SCALE = 20  # scales stay within 2**-20 .. 2**20 (a dead channel, |a| = 0, keeps scale 1)
# ops a positive per-channel scale passes through unchanged (pools: over the spatial axes of NCHW only;
# reductions: over axes other than the channel's)
POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
REDUCTIONS = ("ReduceMean", "ReduceMax")


@dataclass
class Site:
    """One place a per-channel scale can move: a producer, the tensors it travels through, the readers."""

    producer: str  # node name (Conv or LayerNormalization)
    kind: str  # "conv" (channel axis 1) or "layernorm" (channel axis last)
    channels: int
    tensors: dict[str, int] = field(default_factory=dict)  # rescaled tensor -> its channel axis
    readers: list[tuple[str, int]] = field(default_factory=list)  # (node name, weight axis of the channel)
    through: list[str] = field(default_factory=list)  # op types the scale crossed (ReLU, pools, ...)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: i for i in graph.initializer}
    out = {name: numpy_helper.to_array(t) for name, t in values.items() if len(t.dims) <= 1}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> rank, from ONNX shape inference (tensors it cannot type are left out)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # noqa: BLE001 - a graph shape inference cannot type: no ranks, no sites
        log.info("shape inference failed (%s); no equalization", exc)
        return {}
    ranks = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read inside a subgraph (If/Loop/Scan bodies, nested ones too): such a read sees the
    rescaled tensor without a reader that compensates, so the scale must not reach it."""
    return {name for sub in graphs_of(graph) if sub is not graph for node in sub.node for name in node.input}


class _Graph:
    """What the site search reads: initializers, users, ranks, constant axes."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.inits = {i.name: i for i in graph.initializer}
        self.users = users_of(graph)
        self.outputs = {o.name for o in graph.output} | _subgraph_reads(graph)  # tensors the scale must not reach
        self.ranks = _ranks(model)
        self.constants = _constant_values(graph)
        self.nodes = list(graph.node)
        names = Counter(n.name for n in graph.node)
        self.unique = {name for name, count in names.items() if name and count == 1}  # nodes found by name

    def weight(self, name: str) -> onnx.TensorProto | None:
        return self.inits.get(name) if name else None

    def used_once(self, name: str) -> bool:
        return len(self.users.get(name, [])) == 1


def _reader_axis(g: _Graph, node: onnx.NodeProto, tensor: str, axis: int, rank: int) -> int | None:
    """Axis of `node`'s weight that multiplies channel `axis` of `tensor`, or None if `node` cannot
    absorb a per-channel scale of its input exactly."""
    weight_name = node.input[1] if len(node.input) > 1 else ""
    weight = g.weight(weight_name)
    if (weight is None or node.name not in g.unique or node.input[0] != tensor or list(node.input).count(tensor) != 1
            or not g.used_once(weight_name)):
        return None
    if node.op_type == "Conv":
        ok = axis == 1 and _attr(node, "group", 1) == 1 and len(weight.dims) == rank
        return 1 if ok else None
    if axis != rank - 1 or len(weight.dims) != 2:
        return None
    if node.op_type == "MatMul":
        return 0
    if node.op_type == "Gemm" and not _attr(node, "transA", 0):
        return 1 if _attr(node, "transB", 0) else 0
    return None


def _reduced_axes(g: _Graph, node: onnx.NodeProto, rank: int) -> list[int] | None:
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        values = g.constants.get(node.input[1])
        axes = None if values is None else values.tolist()
    if axes is None or (len(np.atleast_1d(axes)) == 0 and not _attr(node, "noop_with_empty_axes", 0)):
        return None  # all axes (or axes computed at run time): the channels mix
    return sorted(int(a) % rank for a in np.atleast_1d(axes))


def _follow(g: _Graph, site: Site, tensor: str, axis: int, rank: int) -> bool:
    """Collect the readers of `tensor` (channel `axis`) into `site`; False where the scale cannot pass."""
    if tensor in g.outputs:
        return False
    site.tensors[tensor] = axis
    users = g.users.get(tensor, [])
    if not users:
        return False
    for node in users:
        if node.op_type == "Relu" or node.op_type in POOLS:
            if len(node.output) != 1 or (node.op_type != "Relu" and axis != 1):
                return False  # MaxPool's Indices output, or pooling over the channel axis
            if not _follow(g, site, node.output[0], axis, rank):
                return False
            site.through.append(node.op_type)
        elif node.op_type in REDUCTIONS:
            axes = _reduced_axes(g, node, rank)
            if axes is None or axis in axes or len(node.output) != 1:
                return False
            keep = _attr(node, "keepdims", 1)
            new_axis = axis if keep else axis - sum(a < axis for a in axes)
            if not _follow(g, site, node.output[0], new_axis, rank if keep else rank - len(axes)):
                return False
            site.through.append(node.op_type)
        else:
            weight_axis = _reader_axis(g, node, tensor, axis, rank)
            if weight_axis is None:
                return False
            site.readers.append((node.name, weight_axis))
    return True


def _producer_site(g: _Graph, node: onnx.NodeProto) -> Site | None:
    """The site of a Conv (weight rows, bias) or LayerNormalization (scale, bias) producer, or None."""
    if len(node.output) != 1 or node.name not in g.unique:
        return None
    params = [name for name in node.input[1:3] if name]
    if any(g.weight(name) is None or not g.used_once(name) for name in params):
        return None
    if node.op_type == "Conv":
        weight = g.weight(node.input[1])
        rank, axis = len(weight.dims), 1
        site = Site(node.name, "conv", int(weight.dims[0]))
    elif node.op_type == "LayerNormalization":
        rank = g.ranks.get(node.output[0])
        scale = g.weight(node.input[1])
        if rank is None or len(scale.dims) != 1 or _attr(node, "axis", -1) % rank != rank - 1:
            return None
        axis = rank - 1
        site = Site(node.name, "layernorm", int(scale.dims[0]))
    else:
        return None
    if not _follow(g, site, node.output[0], axis, rank) or not site.readers:
        return None
    return site


def equalization_sites(model: onnx.ModelProto) -> list[Site]:
    """Every producer whose output channels can be rescaled exactly (see the module docstring), in graph order."""
    g = _Graph(model)
    sites = []
    for node in g.nodes:
        if node.op_type in ("Conv", "LayerNormalization"):
            site = _producer_site(g, node)
            if site is not None:
                sites.append(site)
    return sites


def activation_ranges(model: onnx.ModelProto, sites: Sequence[Site], input_name: str,
                      batches: Sequence[np.ndarray], folder: Path) -> list[np.ndarray]:
    """Per site, the largest |value| of each channel over its rescaled tensors on `batches`."""
    from pfdeploy.calibration.activations import run_batches, save_for_session, session_for, with_outputs

    axis_of = {t: axis for s in sites for t, axis in s.tensors.items()}
    names = sorted(axis_of)
    session = session_for(save_for_session(with_outputs(model, names), folder / "ranges.onnx"))
    peaks: dict[str, np.ndarray] = {}

    def visit(values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            other = tuple(a for a in range(value.ndim) if a != axis_of[name])
            peak = np.abs(value).max(axis=other) if other else np.abs(value)
            peaks[name] = peak if name not in peaks else np.maximum(peaks[name], peak)

    run_batches(session, input_name, batches, names, visit)
    return [np.max([peaks[t] for t in site.tensors], axis=0) for site in sites]


def _weight_array(g: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    return numpy_helper.to_array(g[name]).astype(np.float32, copy=True)


def reader_ranges(model: onnx.ModelProto, site: Site) -> np.ndarray:
    """Largest |weight| of each input channel over the site's readers."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    peaks = []
    for name, axis in site.readers:
        w = np.abs(_weight_array(inits, nodes[name].input[1]))
        peaks.append(w.max(axis=tuple(a for a in range(w.ndim) if a != axis)))
    return np.max(peaks, axis=0)


def equalization_scales(activation: np.ndarray, weight: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Power-of-two scales s (divide the activations, multiply the reader weights), geometric mean about 1.

    Channels whose activation or weight range is 0 (dead channels) keep s = 1.
    """
    activation = np.asarray(activation, np.float64)
    weight = np.asarray(weight, np.float64)
    live = (activation > 0) & (weight > 0) & np.isfinite(activation) & np.isfinite(weight)
    exponent = np.zeros(activation.shape)
    if live.any():
        log2 = alpha * np.log2(activation[live]) - (1 - alpha) * np.log2(weight[live])
        # centred by a whole power of two, so each channel's rounding is its own: a channel scaled by 2^k
        # (and its reader by 2^-k) gets exactly 2^k more, whatever the other channels are
        exponent[live] = np.round(log2) - np.round(np.mean(log2))
    exponent = np.clip(exponent, -MAX_LOG2_SCALE, MAX_LOG2_SCALE)
    return np.exp2(exponent).astype(np.float32)


def _set(inits: dict[str, onnx.TensorProto], name: str, array: np.ndarray) -> None:
    tensor = inits[name]
    new = numpy_helper.from_array(array.astype(numpy_helper.to_array(tensor).dtype), name)
    tensor.CopyFrom(new)


def apply_scales(model: onnx.ModelProto, site: Site, scales: np.ndarray) -> None:
    """Divide the producer's output channels by `scales` and multiply the readers' inputs (in place)."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    producer = nodes[site.producer]
    for index in (1, 2):
        if len(producer.input) > index and producer.input[index]:
            array = _weight_array(inits, producer.input[index])
            shape = [-1] + [1] * (array.ndim - 1)  # conv weight (O, I, kh, kw) / bias (O) / LN scale (C)
            _set(inits, producer.input[index], array / scales.reshape(shape))
    for name, axis in site.readers:
        array = _weight_array(inits, nodes[name].input[1])
        shape = [1] * array.ndim
        shape[axis] = -1
        _set(inits, nodes[name].input[1], array * scales.reshape(shape))


def imbalance(ranges: np.ndarray) -> float:
    """Largest channel range over the median one (1 = balanced; an outlier channel makes it large)."""
    live = ranges[ranges > 0]
    return float(live.max() / np.median(live)) if live.size else 1.0


def equalized_model(model: onnx.ModelProto, input_name: str, batches: Sequence[np.ndarray], folder: Path,
                    alpha: float = ALPHA) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """A copy of `model` with every site equalized on `batches` (`model` itself where there is no site), and one
    report entry per site:
    {producer, kind, readers, through, channels, imbalance_before, imbalance_after, scaled_channels}."""
    sites = equalization_sites(model)
    if not sites:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ranges = activation_ranges(out, sites, input_name, batches, folder)
    report = []
    for site, act in zip(sites, ranges, strict=True):
        scales = equalization_scales(act, reader_ranges(out, site), alpha)
        apply_scales(out, site, scales)
        report.append({
            "producer": site.producer, "kind": site.kind, "readers": [r for r, _ in site.readers],
            "through": sorted(set(site.through)), "channels": site.channels,
            "imbalance_before": imbalance(act), "imbalance_after": imbalance(act / scales),
            "scaled_channels": int(np.count_nonzero(scales != 1)),
        })
    log.info("equalized %d sites (%s)", len(report), ", ".join(r["producer"] for r in report))
    return out, report
