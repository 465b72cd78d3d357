"""Tiny ONNX graphs (FP32, FP16 casts, INT8 Q/DQ) generated per test with onnx.helper."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

META = {
    "pfdeploy.model": "tiny",
    "pfdeploy.num_classes": "5",
    "pfdeploy.overrides": "{}",
    "pfdeploy.checkpoint_sha256": "random",
    "pfdeploy.preprocess": json.dumps({"size": 8, "crop_pct": 1.0}),
    "pfdeploy.input_format": "float-nchw",
    "pfdeploy.opset": "17",
    "pfdeploy.version": "0.1.0",
}


def tiny_graph(precision="fp32", batch="N", img=8, metadata=True, extra_dynamic=False, custom_op=False):
    """input[batch,3,img,img] -> (Q/DQ) Conv -> MaxPool 3x3 s1 -> GlobalAveragePool -> Flatten -> logits."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    h = "H" if extra_dynamic else img
    in_type = TensorProto.FLOAT
    nodes, inits = [], []
    x = "input"
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16, name="cast_in"))
        x, w = "x16", w.astype(np.float16)
    if precision == "int8":
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
            numpy_helper.from_array(np.abs(w).reshape(5, -1).max(1).astype(np.float32) / 127, "w_scale"),
            numpy_helper.from_array(np.zeros(5, np.int8), "w_zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["xq"], name="q_in"),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="dq_in"),
            helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], axis=0, name="q_w"),
            helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wdq"], axis=0, name="dq_w"),
        ]
        x, wname = "xdq", "wdq"
    else:
        wname = "w"
    inits.append(numpy_helper.from_array(w, "w"))
    nodes += [
        helper.make_node("Conv", [x, wname], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="pf_maxpool"),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
    ]
    last = "f"
    if custom_op:
        nodes.append(helper.make_node("Frobnicate", ["f"], ["fr"], domain="com.example", name="weird_node"))
        last = "fr"
    out_type = TensorProto.FLOAT
    if precision == "fp16":
        nodes.append(helper.make_node("Cast", [last], ["logits"], to=TensorProto.FLOAT, name="cast_out"))
    else:
        nodes.append(helper.make_node("Identity", [last], ["logits"], name="out"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", in_type, [batch, 3, h, h])],
        [helper.make_tensor_value_info("logits", out_type, [batch, 5])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.example", 1)] if custom_op else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if metadata:
        meta = {**META, "pfdeploy.precision": precision}
        helper.set_model_props(model, meta)
    if not custom_op:
        onnx.checker.check_model(model)
    return model


@pytest.fixture
def make_onnx(tmp_path):
    """make_onnx(name="tiny.onnx", **tiny_graph kwargs) -> path of a freshly written tiny ONNX file."""

    def make(name="tiny.onnx", **kwargs):
        path = tmp_path / name
        onnx.save(tiny_graph(**kwargs), str(path))
        return path

    return make


@pytest.fixture
def env_h100():
    """The environment dict `current_environment()` returns on an H100 with TensorRT 10.3 (test data)."""
    return {
        "tensorrt_version": "10.3.0",
        "cuda_runtime_version": "12.4",
        "cuda_driver_version": "12.4",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "gpu_index": 0,
    }
