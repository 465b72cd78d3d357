"""pfdeploy's own graphs pass the TensorRT compatibility check: fp32, fp16, uint8-nhwc and the default
(TensorRT) INT8 graph of every registered model at full size (`slow`).

The cheap forms are checked where each stage's tests already make them, at no extra export:
tests/export/test_onnx.py (fp32: test_graph_is_clean; uint8-nhwc: test_uint8_nhwc_equals_outside_preprocessing),
tests/export/test_fp16.py (test_cheap_fp16_passes_tolerance) and tests/calibration/test_quantize.py (INT8 of
every distinct cheap graph: test_every_registered_model_quantizes_close_to_fp32; of the trained
fixtures: test_tensorrt_graph_is_symmetric_int8_per_channel_weights).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from export_helpers import FULL_SIZE, perturbed_checkpoint

from pfdeploy.calibration import int8_from_onnx
from pfdeploy.engines.trt_check import trt_violations
from pfdeploy.export import fp16_from_onnx, onnx_from_model

CALIB = Path(__file__).resolve().parents[1] / "fixtures" / "digits" / "calib"


def _graphs(fp32: Path, uint8: Path, tmp_path: Path, num_images: int) -> dict[str, Path]:
    return {
        "fp32": fp32,
        "fp16": fp16_from_onnx(fp32, tmp_path / "m.fp16.onnx"),
        "uint8-nhwc": uint8,
        "int8": int8_from_onnx(fp32, CALIB, tmp_path / "m.int8.onnx", num_images=num_images, method="minmax",
                               cache_dir=tmp_path),
    }


def _assert_compatible(graphs: dict[str, Path]) -> None:
    found = {kind: [str(v) for v in trt_violations(path)] for kind, path in graphs.items()}
    assert found == {kind: [] for kind in graphs}
    raw = onnx.load(str(graphs["uint8-nhwc"])).graph
    first = [n for n in raw.node if "input" in n.input]
    assert [n.op_type for n in first] == ["Cast"]  # the raw bytes go through one Cast, nothing else
    int8 = onnx.load(str(graphs["int8"])).graph
    inits = {i.name: i.data_type for i in int8.initializer}
    dq_inputs = [inits.get(n.input[0]) for n in int8.node if n.op_type == "DequantizeLinear"]
    assert dq_inputs and onnx.TensorProto.INT32 not in dq_inputs  # biases stay float


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_graphs_pass_the_check(name, tmp_path):
    ckpt = perturbed_checkpoint(name, tmp_path / "w.pth")
    fp32 = onnx_from_model(name, tmp_path / "m.onnx", checkpoint=ckpt)
    uint8 = onnx_from_model(name, tmp_path / "m.uint8.onnx", checkpoint=ckpt, input_format="uint8-nhwc")
    _assert_compatible(_graphs(fp32, uint8, tmp_path, num_images=16))
