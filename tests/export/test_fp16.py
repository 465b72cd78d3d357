"""FP16 graphs: compute in FP16, keep overflow-prone ops FP32, pass the fp16 tolerances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_helpers import (
    CHEAP_GRAPHS,
    FULL_SIZE,
    perturbed_checkpoint,
)

from pfdeploy.engines.trt_check import trt_violations
from pfdeploy.errors import PfdeployError
from pfdeploy.export import FP32_OPS, describe_onnx, fp16_from_onnx, onnx_from_model, read_metadata
from pfdeploy.runtime.ort_options import ort_session_from_onnx
from pfdeploy.runtime.verify import verify_artifact

TRAINED = Path(__file__).parents[1] / "fixtures" / "trained"
DIGITS = Path(__file__).parents[1] / "fixtures" / "digits"


def _fp32_nodes_stay_fp32(path: Path) -> None:
    """Every blocked op reads FP32 inputs: its producers are Casts to FP32 or FP32 graph inputs."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    blocked = [n for n in model.graph.node if n.op_type in FP32_OPS]
    assert blocked
    for node in blocked:
        assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, (node.op_type, node.name)
    # and the heavy ops really run in FP16
    weights = [t for t in model.graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)


@pytest.mark.parametrize("name", CHEAP_GRAPHS)
def test_cheap_fp16_passes_tolerance(name, cheap_exports, tmp_path):
    src, ckpt = cheap_exports(name)
    dst = fp16_from_onnx(src, tmp_path / "m16.onnx")
    meta = read_metadata(dst)
    assert meta["pfdeploy.precision"] == "fp16" and meta["pfdeploy.fp16_io"] == "fp32"
    assert meta["pfdeploy.checkpoint_sha256"] == read_metadata(src)["pfdeploy.checkpoint_sha256"]
    info = describe_onnx(dst)
    assert info["inputs"][0]["dtype"] == "float32" and info["outputs"][0]["dtype"] == "float32"
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    _fp32_nodes_stay_fp32(dst)
    assert [str(v) for v in trt_violations(dst)] == []  # within TensorRT's documented ONNX support
    report = verify_artifact(dst, checkpoint=ckpt, samples=10, batch=5)
    assert report.passed, report.format()


def test_fp16_io_types_configurable(cheap_exports, tmp_path):
    src, ckpt = cheap_exports("vit_ti_max")
    dst = fp16_from_onnx(src, tmp_path / "io16.onnx", keep_io_types=False)
    info = describe_onnx(dst)
    assert info["inputs"][0]["dtype"] == "float16" and info["outputs"][0]["dtype"] == "float16"
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float16)
    assert ort_session_from_onnx(dst).run(None, {"input": x})[0].dtype == np.float16
    assert verify_artifact(dst, checkpoint=ckpt, samples=4).passed


def test_fp16_of_fp16_is_refused(cheap_exports, tmp_path):
    dst = fp16_from_onnx(cheap_exports("r50_max")[0], tmp_path / "a.onnx")
    with pytest.raises(PfdeployError, match="not fp32"):
        fp16_from_onnx(dst, tmp_path / "b.onnx")


def test_fp16_trained_keeps_top1_on_real_images(tmp_path):
    fixtures = json.loads((TRAINED / "fixtures.json").read_text())
    entry = fixtures["vit_ti_max_digits"]
    from pfdeploy.calibration.preprocess import Preprocess

    ckpt = TRAINED / entry["checkpoint"]
    path = onnx_from_model(entry["model"], tmp_path / "d16.onnx", checkpoint=ckpt, precision="fp16",
                           num_classes=entry["num_classes"], overrides=entry["overrides"],
                           preprocess=Preprocess.from_dict(entry["preprocess"]), input_format="uint8-nhwc")
    report = verify_artifact(path, checkpoint=ckpt, samples=40, data=DIGITS / "val", batch=8)
    assert report.passed, report.format()
    assert report.sources["data"]["top1"] == 1.0


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_fp16(name, tmp_path):
    ckpt = perturbed_checkpoint(name, tmp_path / "w.pth")
    path = onnx_from_model(name, tmp_path / "m16.onnx", checkpoint=ckpt, precision="fp16")
    report = verify_artifact(path, checkpoint=ckpt, samples=10, batch=5)
    assert report.passed, report.format()
    assert report.sources["real-looking"]["top1"] >= 0.9
