"""Where the one INT8 graph (`--target tensorrt`) puts its Q/DQ, and how OpenVINO reads it.

Tiny forms of each family: the parameter-free layers and the ResNets' residual adds sit between
Dequantize and Quantize, Conv/Gemm biases stay float, weights are 7-bit (reduce_range), and
OpenVINO runs the ResNet's pools on u8 with no separate requantize (the x86 re-encoding in
`qdq.openvino_graph_from_qdq`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from export_helpers import tiny
from onnx import TensorProto, numpy_helper

from pfdeploy.calibration import int8_from_onnx
from pfdeploy.calibration.qdq import cpu_graph_from_qdq, openvino_graph_from_qdq

DIGITS = Path(__file__).resolve().parents[1] / "fixtures" / "digits"
PIT = pytest.param("pit_s_max", marks=pytest.mark.slow)  # 10 s to quantize; same layers as vit_s_max
FAMILIES = ["r50_hybrid", "vit_s_max", PIT]


@pytest.fixture(scope="module")
def int8_graph(tmp_path_factory):
    """int8_graph(name) -> (FP32 path, TensorRT INT8 path) of the model's tiny form, made once."""
    from pfdeploy.export import onnx_from_model

    root, made = tmp_path_factory.mktemp("int8-placement"), {}

    def make(name: str) -> tuple[Path, Path]:
        if name not in made:
            fp32 = onnx_from_model(name, root / f"{name}.onnx", num_classes=10, overrides=tiny(name))
            made[name] = fp32, int8_from_onnx(fp32, DIGITS / "calib", num_images=16, method="minmax",
                                              cache_dir=root)
        return made[name]

    return make


def _graph(path: Path):
    model = onnx.load(path)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return model, producer, consumers


def _between_dq_and_q(node, producer, consumers, inits) -> bool:
    data = [i for i in node.input if i and i not in inits]
    fed = all(i in producer and producer[i].op_type == "DequantizeLinear" for i in data)
    read = all(c.op_type == "QuantizeLinear" for c in consumers.get(node.output[0], [])) and node.output[0] in consumers
    return bool(data) and fed and read


def test_resnet_pools_and_residual_adds_sit_between_dequantize_and_quantize(int8_graph):
    model, producer, consumers = _graph(int8_graph("r50_hybrid")[1])
    inits = {i.name for i in model.graph.initializer}
    pools = [n for n in model.graph.node if n.op_type in ("MaxPool", "AveragePool")]
    adds = [n for n in model.graph.node if n.op_type == "Add" and not set(n.input) & inits]
    assert len(pools) >= 5 and len(adds) == 4  # 2 PF max-pools, 3 strided avg-pools; 4 residual blocks
    for node in pools + adds:
        assert _between_dq_and_q(node, producer, consumers, inits), (node.op_type, node.name)


@pytest.mark.parametrize("name", ["vit_s_max", PIT])
def test_transformer_max_pool_mixers_sit_between_dequantize_and_quantize(name, int8_graph):
    model, producer, consumers = _graph(int8_graph(name)[1])
    inits = {i.name for i in model.graph.initializer}
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert pools
    for node in pools:
        assert _between_dq_and_q(node, producer, consumers, inits), node.name


@pytest.mark.parametrize("name", FAMILIES)
def test_biases_stay_float_and_weights_are_seven_bit(name, int8_graph):
    model, producer, _ = _graph(int8_graph(name)[1])
    inits = {i.name: i for i in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    biased = [n for n in weighted if len(n.input) > 2 and n.input[2]]
    assert biased  # every family has a biased Conv or Gemm (patch embedding, classifier)
    for node in biased:
        bias = inits.get(node.input[2])
        assert bias is not None and bias.data_type == TensorProto.FLOAT, node.name  # no DQ on an INT32 bias
    weights = [numpy_helper.to_array(inits[n.input[0]]) for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weights and all(w.dtype == np.int8 for w in weights)
    # 7-bit weights: x86 u8 x s8 kernels without VNNI add pairs in saturating int16
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


def test_openvino_reading_is_the_x86_reencoding_only_where_relus_fold(int8_graph):
    resnet = onnx.load(int8_graph("r50_hybrid")[1])
    reencoded = openvino_graph_from_qdq(resnet)
    assert reencoded is not None
    assert reencoded.SerializeToString() == cpu_graph_from_qdq(resnet)[0].SerializeToString()
    assert openvino_graph_from_qdq(onnx.load(int8_graph("vit_s_max")[1])) is None  # no ReLU: read as is
    assert openvino_graph_from_qdq(onnx.load(int8_graph("r50_hybrid")[0])) is None  # FP32: nothing to do


def test_openvino_runs_the_resnet_pools_on_u8_without_requantizing(int8_graph):
    pytest.importorskip("openvino", reason="the openvino backend needs pip install 'pfdeploy[openvino]'")
    from pfdeploy.runtime import load
    from pfdeploy.runtime.openvino_backend import layer_precisions
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    path = int8_graph("r50_hybrid")[1]
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with load(path, backend="openvino") as session:
        layers = layer_precisions(session.compiled_model)
        got = session(x)
    pools = {p: n for (layer, p), n in layers.items() if layer == "Pooling"}
    assert pools == {"u8": 5}, layers  # s8 pools here meant the graph was read as TensorRT's s8
    assert ("FakeQuantize", "i8") not in layers, layers  # no requantize left after a pool
    assert all(p == "u8" for (layer, p) in layers if layer == "Convolution"), layers
    want = ort_session_from_onnx(path).run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()  # same INT8 model as on ONNX Runtime
