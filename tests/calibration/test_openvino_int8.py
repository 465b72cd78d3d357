"""OpenVINO runs pfdeploy's INT8 Q/DQ graph in INT8 and keeps the trained fixture's accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from pfdeploy.calibration import int8_from_onnx
from pfdeploy.calibration.fixtures import get_fixture
from pfdeploy.runtime import load

pytest.importorskip("openvino", reason="the openvino backend needs pip install 'pfdeploy[openvino]'")

FIXTURE = "r50_hybrid_digits"


def _top1(session, images: np.ndarray, labels: np.ndarray) -> float:
    preds = np.concatenate([session(images[i:i + 100]).argmax(1) for i in range(0, len(images), 100)])
    return 100.0 * float(np.mean(preds == labels))


def test_openvino_runs_the_int8_graph_in_int8_within_a_point_of_fp32(fixture_onnx, held_out, tmp_path, top1):
    from pfdeploy.runtime.openvino_backend import int8_layers

    fx = get_fixture(FIXTURE)
    images, labels = held_out(FIXTURE)
    fp32 = fixture_onnx(FIXTURE)
    int8 = int8_from_onnx(fp32, fx.calib_dir, tmp_path / "m.int8.onnx", num_images=256, cache_dir=tmp_path)
    with load(int8, backend="openvino") as session, load(fp32, backend="openvino") as float_session:
        layers = int8_layers(session.compiled_model)
        assert layers["int8"].get("Convolution", 0) >= 10, layers  # every conv of the narrow ResNet ...
        assert "Convolution" not in layers["float"], layers  # ... and none left in float
        assert layers["int8"].get("Pooling", 0) >= 1 and "Pooling" not in layers["float"]  # PF layers INT8 too
        assert int8_layers(float_session.compiled_model)["int8"] == {}  # the FP32 graph stays float
        acc8, acc32 = _top1(session, images, labels), _top1(float_session, images, labels)
    assert acc32 == pytest.approx(top1(fp32, images, labels), abs=0.3)  # OpenVINO FP32 = ONNX Runtime FP32
    assert acc8 >= acc32 - 1.0, f"OpenVINO INT8 {acc8:.2f}% vs FP32 {acc32:.2f}%"
