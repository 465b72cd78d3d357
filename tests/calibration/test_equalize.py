"""Cross-layer equalization (pfdeploy.calibration.equalize): where a per-channel scale can move exactly,
that moving it leaves the FP32 function unchanged, and that it takes the outliers out of the activations."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfdeploy.calibration.equalize import (
    equalization_scales,
    equalization_sites,
    equalized_model,
    imbalance,
)


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def conv_graph(middle: list[str], *, group: int = 1, extra_output: bool = False, add_branch: bool = False,
               shared_weight: bool = False, if_branch: bool = False, reader_name: str = "conv2",
               seed: int = 0) -> onnx.ModelProto:
    """x (N,4,8,8) -> Conv 4->6 (+bias) -> `middle` ops (Relu, MaxPool, AveragePool, Sigmoid) -> Conv 6->5 (3x3)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((6, 4, 1, 1)).astype(np.float32)
    w1[2] *= 64  # an outlier output channel (as a trained network has)
    inits = [_init("w1", w1), _init("b1", rng.standard_normal(6)),
             _init("w2", rng.standard_normal((5, 6 // group, 3, 3))), _init("b2", rng.standard_normal(5))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["t0"], name="conv1")]
    tensor = "t0"
    for index, op in enumerate(middle):
        attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]} if op in ("MaxPool", "AveragePool") else {}
        nodes.append(helper.make_node(op, [tensor], [f"t{index + 1}"], name=f"{op.lower()}{index}", **attrs))
        tensor = f"t{index + 1}"
    nodes.append(helper.make_node("Conv", [tensor, "w2", "b2"], ["y"], name=reader_name, pads=[1, 1, 1, 1],
                                  group=group))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if add_branch:
        nodes.append(helper.make_node("Add", [tensor, tensor], ["z"], name="add"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    if extra_output:
        outputs.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    if if_branch:  # an If whose branches read the tensor from the outer scope
        branches = [helper.make_graph([helper.make_node("Relu", [tensor], [f"r{i}"])], f"branch{i}", [],
                                      [helper.make_tensor_value_info(f"r{i}", TensorProto.FLOAT, None)])
                    for i in range(2)]
        inits.append(numpy_helper.from_array(np.array(True), "cond"))
        nodes.append(helper.make_node("If", ["cond"], ["w"], name="if", then_branch=branches[0],
                                      else_branch=branches[1]))
        outputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, None))
    if shared_weight:
        nodes.append(helper.make_node("Conv", [tensor, "w2"], ["y2"], name="conv3", pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def layernorm_graph(seed: int = 0) -> onnx.ModelProto:
    """x (N,9,8) -> LayerNorm -> MatMul (8x6) + token mean -> Gemm (transB) head: two LayerNorm sites."""
    rng = np.random.default_rng(seed)
    gamma = 1 + 0.1 * rng.standard_normal(8)
    gamma[[1, 5]] *= 64  # outlier LayerNorm output channels
    inits = [_init("g1", gamma), _init("be1", rng.standard_normal(8)), _init("w", rng.standard_normal((8, 6))),
             _init("g2", 1 + 0.1 * rng.standard_normal(8)), _init("be2", rng.standard_normal(8)),
             _init("head", rng.standard_normal((3, 8))), _init("hb", rng.standard_normal(3)),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g1", "be1"], ["n1"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["n1", "w"], ["m"], name="mm"),
        helper.make_node("LayerNormalization", ["x", "g2", "be2"], ["n2"], name="ln2", axis=-1),
        helper.make_node("ReduceMean", ["n2", "axes"], ["pooled"], name="mean", keepdims=0),
        helper.make_node("Gemm", ["pooled", "head", "hb"], ["logits"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 9, 8])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("middle", [["Relu"], ["Relu", "MaxPool"], ["Relu", "AveragePool"], ["MaxPool", "Relu"]])
def test_scale_moves_through_relu_and_both_pools(middle):
    sites = equalization_sites(conv_graph(middle))
    assert [(s.producer, s.readers, sorted(s.through)) for s in sites] == [("conv1", [("conv2", 1)], sorted(middle))]


@pytest.mark.parametrize("case", [dict(middle=["Sigmoid"]), dict(middle=["Relu"], add_branch=True),
                                  dict(middle=["Relu", "MaxPool"], extra_output=True),
                                  dict(middle=["Relu"], group=2), dict(middle=["Relu"], shared_weight=True),
                                  dict(middle=["Relu"], reader_name=""), dict(middle=["Relu"], reader_name="conv1"),
                                  dict(middle=["Relu", "MaxPool"], if_branch=True)],
                         ids=["sigmoid", "also-read-by-add", "graph-output", "grouped-reader", "shared-weight",
                              "unnamed-reader", "reader-name-taken", "read-inside-an-if"])
def test_no_site_where_the_rescaling_would_not_be_exact(case):
    assert equalization_sites(conv_graph(**case)) == []


def test_layernorm_sites_reach_matmul_and_gemm_through_a_token_mean():
    sites = equalization_sites(layernorm_graph())
    assert [(s.producer, s.kind, s.readers, s.through) for s in sites] == [
        ("ln1", "layernorm", [("mm", 0)], []), ("ln2", "layernorm", [("gemm", 1)], ["ReduceMean"])]


@pytest.mark.parametrize("build", [lambda: conv_graph(["Relu", "MaxPool"]), lambda: conv_graph(["Relu", "AveragePool"]),
                                   layernorm_graph], ids=["maxpool", "avgpool", "layernorm"])
def test_equalized_graph_computes_the_same_function_and_removes_the_outlier(build, tmp_path):
    model = build()
    shape = [d.dim_value or 4 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    batches = [x[:2], x[2:]]
    equalized, report = equalized_model(model, "x", batches, tmp_path)
    assert report and report[0]["scaled_channels"] > 0  # the site with the outlier
    before = _run(model, x)
    after = _run(equalized, x)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(b, a)  # power-of-two scales: every product exact in float32
    first = report[0]
    assert first["imbalance_before"] > 10 and first["imbalance_after"] < first["imbalance_before"] / 4
    assert model.graph.initializer[0].raw_data != equalized.graph.initializer[0].raw_data  # a copy changed
    assert [n.op_type for n in equalized.graph.node] == [n.op_type for n in model.graph.node]  # weights only


def test_scales_are_powers_of_two_and_follow_a_moved_outlier_exactly():
    rng = np.random.default_rng(0)
    act, weight = rng.uniform(0.5, 2, 16), rng.uniform(0.5, 2, 16)
    base = equalization_scales(act, weight)
    assert np.all(np.log2(base) == np.round(np.log2(base)))
    moved_act, moved_weight = act.copy(), weight.copy()
    moved_act[[3, 7]] *= 64  # the outlier transform: channel x 64, reader / 64
    moved_weight[[3, 7]] /= 64
    moved = equalization_scales(moved_act, moved_weight)
    ratio = moved / base
    assert np.all(ratio[[3, 7]] == 64 * ratio[0]) and np.all(np.delete(ratio, [3, 7]) == ratio[0])
    # what the INT8 grid sees (up to one global power of two) is exactly what it saw without the outliers
    assert imbalance(moved_act / moved) == pytest.approx(imbalance(act / base), rel=1e-12)


def test_dead_channels_keep_scale_one():
    scales = equalization_scales(np.array([0.0, 1.0, 4.0, 0.5]), np.array([1.0, 0.0, 1.0, 2.0]))
    assert scales[0] == 1 and scales[1] == 1 and np.all(np.isfinite(scales))


@pytest.mark.parametrize("name", ["r50_hybrid_digits", "vit_ti_max_digits"])
def test_equalized_fixture_gives_the_same_logits_bit_for_bit(name, fixture_onnx, held_out, tmp_path):
    images, _ = held_out(name)
    model = onnx.load(str(fixture_onnx(name)))
    equalized, report = equalized_model(model, "input", [images[:64], images[64:128]], tmp_path)
    kinds = {"r50_hybrid_digits": ("conv", 8), "vit_ti_max_digits": ("layernorm", 9)}[name]
    assert {r["kind"] for r in report} == {kinds[0]} and len(report) == kinds[1]  # every exact site found
    x = {"input": images}
    assert np.array_equal(_run_named(equalized, x), _run_named(model, x))


def _run_named(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
