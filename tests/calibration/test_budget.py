"""The INT8 accuracy budget (`quantize --val-data DIR --max-drop POINTS`, pfdeploy.calibration.budget):
it keeps the most sensitive tensors in float until the graph is within budget on the labelled images,
records them so that `--exclude` reproduces the graph, stays TensorRT-valid, and refuses in one line
when only an all-float graph would meet the budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from outlier_fixtures import CASES

from pfdeploy.calibration import int8_from_onnx
from pfdeploy.calibration.fixtures import get_fixture
from pfdeploy.cli import main
from pfdeploy.engines.trt_check import trt_violations
from pfdeploy.errors import PfdeployError

DIGITS = Path(__file__).resolve().parents[1] / "fixtures" / "digits"
CASE = "r50-reduce-x64"  # without equalization its INT8 graph loses about 40 points


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


# ids without the word "tensorrt": tests/conftest.py skips items with that keyword where TensorRT is absent
@pytest.mark.parametrize("target", [pytest.param("tensorrt", id="trt-graph"),
                                    pytest.param("cpu", id="cpu-graph", marks=pytest.mark.slow)])
def test_budget_keeps_the_culprits_float_until_within_points(target, outlier_export, held_out, top1, tmp_path,
                                                             capsys):
    fp32, _ = outlier_export(CASE)
    fx = get_fixture(CASES[CASE].fixture)
    images, labels = held_out(fx.name)
    common = ["--calib-data", str(fx.calib_dir), "--num-images", "64", "--cache-dir", str(tmp_path),
              "--no-equalize", "--bias-correction", "off", "--target", target]
    out = tmp_path / "budget.onnx"
    assert main(["quantize", str(fp32), *common, "--output", str(out), "--val-data", str(fx.val_dir),
                 "--max-drop", "2"]) == 0
    printed = capsys.readouterr().out
    acc32, after = top1(fp32, images, labels), top1(out, images, labels)
    assert after >= acc32 - 2, (acc32, after)  # measured here, on every held-out image
    budget = json.loads(_meta(out)["pfdeploy.int8_budget"])
    assert budget["metric"] == "top1" and budget["images"] == len(labels) and budget["kept_float"]
    assert budget["after"] == pytest.approx(after) and budget["fp32"] == pytest.approx(acc32)
    assert budget["before"] < acc32 - 20  # the graph without the budget (test_outliers.py: it breaks)
    # the shortest prefix of the ranking: one fewer tensor was measured outside the budget, and doubling
    # then halving measured about 2 log2(n) prefixes, not n
    count, steps = len(budget["tensors"]), budget["steps"]
    assert count == min(s["tensors"] for s in steps if acc32 - s["top1"] <= 2)
    assert count == 1 or any(s["tensors"] == count - 1 and acc32 - s["top1"] > 2 for s in steps)
    assert steps[0]["tensors"] == 1 and len(steps) <= 2 * np.ceil(np.log2(count)) + 1
    assert budget["speed"]["before_img_per_s"] > 0 and budget["speed"]["after_img_per_s"] > 0
    assert f"INT8 budget 2 points of top-1 on {len(labels)} images" in printed
    assert ", ".join(budget["kept_float"]) in printed
    excluded = _meta(out)["pfdeploy.calibration_excluded"].split(",")
    assert excluded == budget["kept_float"]
    if target == "tensorrt":
        assert [str(v) for v in trt_violations(out)] == []
    again = tmp_path / "again.onnx"
    assert main(["quantize", str(fp32), *common, "--output", str(again), "--exclude", *excluded]) == 0
    assert top1(again, images, labels) == after  # --exclude reproduces the budget's graph


def _tiny_resnet_graph(path: Path) -> Path:
    """input (N,3,32,32) -> Conv 3->4 (32x32 kernel) -> Relu -> Flatten -> Gemm -> logits: few tensors."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 32, 32)).astype(np.float32) * 0.05, "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fcb")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    pre = {"size": 32, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.3092] * 3, "std": [0.349] * 3}
    model.metadata_props.add(key="pfdeploy.preprocess", value=json.dumps(pre))
    onnx.save(model, str(path))
    return path


def test_budget_met_only_by_an_all_float_graph_is_refused_in_one_line(tmp_path):
    import shutil

    from PIL import Image

    constant, unlabelled = tmp_path / "constant", tmp_path / "unlabelled"
    constant.mkdir()
    unlabelled.mkdir()
    for i in range(8):
        Image.new("L", (32, 32), 0).save(constant / f"{i}.png")
    for image in sorted((DIGITS / "val").rglob("*.png"))[::10]:
        shutil.copy(image, unlabelled / f"{image.parent.name}-{image.name}")
    graph = _tiny_resnet_graph(tmp_path / "tiny.onnx")
    # calibrated on black images, the input quantizer clips every digit; without labels the budget is top-1
    # agreement with FP32, which only the all-float graph keeps at 0 points
    with pytest.raises(PfdeployError, match="only with every activation in float") as info:
        int8_from_onnx(graph, constant, tmp_path / "o.onnx", cache_dir=tmp_path, val_data=unlabelled,
                       max_drop=0.0, speed_rounds=0)
    assert "\n" not in str(info.value) and not (tmp_path / "o.onnx").exists()
