"""INT8 Q/DQ graphs of the trained fixtures: accuracy, TensorRT-compatible form, placement, cache."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_helpers import tiny
from onnx import TensorProto, numpy_helper
from PIL import Image

from pfdeploy._io import sha256_file
from pfdeploy.calibration import int8_from_onnx
from pfdeploy.calibration.fixtures import get_fixture, list_fixtures
from pfdeploy.calibration.qdq import ort_kernel_report, placement_report
from pfdeploy.errors import PfdeployError
from pfdeploy.models import get_config, list_models

DIGITS = Path(__file__).resolve().parents[1] / "fixtures" / "digits"
FIXTURES = list_fixtures()


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
@pytest.mark.parametrize("name", FIXTURES)
def test_int8_top1_within_one_point_of_fp32(name, target, fixture_onnx, held_out, tmp_path, top1):
    fx = get_fixture(name)
    images, labels = held_out(name)
    fp32 = fixture_onnx(name)
    out = int8_from_onnx(fp32, fx.calib_dir, tmp_path / "m.int8.onnx", num_images=256, target=target,
                         cache_dir=tmp_path)
    acc32, acc8 = top1(fp32, images, labels), top1(out, images, labels)
    assert acc32 == pytest.approx(fx.fp32_top1, abs=0.3)  # the fixture's recorded accuracy
    assert len(labels) >= 300
    assert acc8 >= acc32 - 1.0, f"INT8 {acc8:.2f}% vs FP32 {acc32:.2f}%"


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_other_calibration_methods_stay_accurate(method, fixture_onnx, held_out, tmp_path, top1):
    name = "r50_hybrid_digits"
    images, labels = held_out(name)
    out = int8_from_onnx(fixture_onnx(name), get_fixture(name).calib_dir, tmp_path / "m.onnx", method=method,
                         num_images=128, cache_dir=tmp_path)
    assert onnx.load(out).metadata_props  # written
    assert top1(out, images, labels) >= top1(fixture_onnx(name), images, labels) - 1.0


@pytest.mark.parametrize("name", FIXTURES)
def test_fp16_top1_within_point_two_of_fp32(name, fixture_onnx, held_out, top1):
    images, labels = held_out(name)
    acc32, acc16 = top1(fixture_onnx(name), images, labels), top1(fixture_onnx(name, "fp16"), images, labels)
    assert acc16 >= acc32 - 0.2


@pytest.mark.parametrize("name", FIXTURES)
def test_bad_calibration_is_detected_by_verify(name, fixture_onnx, tmp_path):
    from pfdeploy.runtime.verify import verify_artifact

    fx = get_fixture(name)
    constant = tmp_path / "constant"
    constant.mkdir()
    for i in range(16):
        Image.new("L", (32, 32), 0).save(constant / f"{i}.png")
    good = int8_from_onnx(fixture_onnx(name), fx.calib_dir, tmp_path / "good.onnx", num_images=128,
                          cache_dir=tmp_path)
    bad = int8_from_onnx(fixture_onnx(name), constant, tmp_path / "bad.onnx", cache_dir=tmp_path)
    assert verify_artifact(good, checkpoint=fx.checkpoint, data=fx.val_dir, samples=32).passed
    report = verify_artifact(bad, checkpoint=fx.checkpoint, data=fx.val_dir, samples=32)
    assert not report.passed
    assert not report.sources["data"]["passed"]


def _zero_points(model: onnx.ModelProto):
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            yield node, inits[node.input[0]] if node.input[0] in inits else None, inits[node.input[2]]


@pytest.mark.parametrize("name", FIXTURES)
def test_tensorrt_graph_is_symmetric_int8_per_channel_weights(name, fixture_onnx, tmp_path):
    out = int8_from_onnx(fixture_onnx(name), get_fixture(name).calib_dir, tmp_path / "m.onnx", num_images=64,
                         cache_dir=tmp_path)
    model = onnx.load(out)
    onnx.checker.check_model(model)
    weights = 0
    for node, weight, zp in _zero_points(model):
        if zp.data_type == TensorProto.INT32:  # bias: int32, zero point 0
            assert not numpy_helper.to_array(zp).any()
            continue
        assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any(), node.name
        if weight is not None and weight.data_type == TensorProto.INT8 and len(weight.dims) > 1:
            weights += 1
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            consumer = next(n for n in model.graph.node if node.output[0] in n.input)
            # per output channel: axis 0 for Conv/Gemm (O, I, ...) weights, 1 for MatMul (K, N) weights
            assert axis == (1 if consumer.op_type == "MatMul" else 0), (consumer.op_type, axis)
            assert list(zp.dims) == [weight.dims[axis]]
        elif weight is None:
            assert list(zp.dims) == []  # per-tensor activations
    assert weights > 0
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["pfdeploy.precision"] == "int8"
    assert meta["pfdeploy.calibration_method"] == "entropy" and meta["pfdeploy.calibration_images"] == "64"
    assert meta["pfdeploy.checkpoint_sha256"] == sha256_file(get_fixture(name).checkpoint)


def test_placement_keeps_pf_layers_and_adds_int8_in_resnets(fixture_onnx, tmp_path):
    name = "r50_hybrid_digits"
    out = int8_from_onnx(fixture_onnx(name), get_fixture(name).calib_dir, tmp_path / "m.onnx", num_images=64,
                         cache_dir=tmp_path)
    report = placement_report(onnx.load(out))
    for op in ("Conv", "MaxPool", "AveragePool", "Add", "Gemm"):
        assert report["int8"].get(op, 0) > 0, (op, report)
    assert "MaxPool" not in report["float"] and "Conv" not in report["float"]
    cpu = int8_from_onnx(fixture_onnx(name), get_fixture(name).calib_dir, tmp_path / "c.onnx", num_images=64,
                         cache_dir=tmp_path, target="cpu")
    kernels = ort_kernel_report(str(cpu))
    # ONNX Runtime runs every conv, residual add and pool of the CPU graph in INT8.
    convs = sum(n.op_type == "Conv" for n in onnx.load(fixture_onnx(name)).graph.node)
    assert kernels["int8"]["QLinearConv"] == convs and kernels["int8"]["QLinearAdd"] == 4
    assert kernels["int8"]["NhwcMaxPool"] == 2 and kernels["int8"]["QLinearAveragePool"] == 3
    assert not {"Conv", "Relu", "MaxPool", "Add"} & set(kernels["float"]), kernels


def test_placement_keeps_layernorm_softmax_gelu_float_in_transformers(fixture_onnx, tmp_path):
    name = "vit_ti_max_digits"
    out = int8_from_onnx(fixture_onnx(name), get_fixture(name).calib_dir, tmp_path / "m.onnx", num_images=64,
                         cache_dir=tmp_path)
    report = placement_report(onnx.load(out))
    assert report["int8"]["MatMul"] > 0 and report["int8"]["MaxPool"] == 2
    gelu = "Gelu" if "Gelu" in report["float"] else "Erf"  # opset 20 Gelu, or its erf form
    for op in ("LayerNormalization", gelu):
        assert report["float"][op] > 0 and op not in report["int8"]
        assert report["reasons"][op]


def test_second_quantize_reuses_cached_ranges(fixture_onnx, tmp_path, caplog):
    name = "r50_hybrid_digits"
    args = (fixture_onnx(name), get_fixture(name).calib_dir)
    with caplog.at_level(logging.INFO, logger="pfdeploy.calibration.quantize"):
        first = int8_from_onnx(*args, tmp_path / "a.onnx", num_images=64, cache_dir=tmp_path / "cache")
        second = int8_from_onnx(*args, tmp_path / "b.onnx", num_images=64, cache_dir=tmp_path / "cache")
        third = int8_from_onnx(*args, tmp_path / "c.onnx", num_images=64, seed=1, cache_dir=tmp_path / "cache")
    messages = [r.getMessage() for r in caplog.records if "calibration ranges" in r.getMessage()]
    assert [m.split()[2] for m in messages] == ["computed", "reused", "computed"]
    assert len(list((tmp_path / "cache" / "calibration").glob("*.json"))) == 2
    assert first.read_bytes() == second.read_bytes() and third.is_file()


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_quantizes(name, tmp_path):
    """Cheap form of every registry entry (same layer types): the INT8 graph runs and keeps its pools INT8."""
    from pfdeploy.export import onnx_from_model

    fp32 = onnx_from_model(name, tmp_path / "m.onnx", num_classes=10, overrides=tiny(name))
    out = int8_from_onnx(fp32, DIGITS / "calib", num_images=16, method="minmax", cache_dir=tmp_path)
    assert out.name == "m.int8.onnx"
    report = placement_report(onnx.load(out))
    if get_config(name).pf_layers:
        assert report["int8"].get("MaxPool", 0) > 0 and "MaxPool" not in report["float"]
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert ort_session_from_onnx(out).run(None, {"input": x})[0].shape == (2, 10)


def test_already_quantized_graph_is_refused(fixture_onnx, tmp_path):
    name = "r50_hybrid_digits"
    out = int8_from_onnx(fixture_onnx(name), get_fixture(name).calib_dir, tmp_path / "m.onnx", num_images=16,
                         method="minmax", cache_dir=tmp_path)
    with pytest.raises(PfdeployError, match="already quantized"):
        int8_from_onnx(out, get_fixture(name).calib_dir, tmp_path / "again.onnx", cache_dir=tmp_path)


def test_fp16_graph_is_refused(fixture_onnx, tmp_path):
    with pytest.raises(PfdeployError, match="FP16"):
        int8_from_onnx(fixture_onnx("r50_hybrid_digits", "fp16"), DIGITS / "calib", tmp_path / "m.onnx")


def test_non_onnx_file_is_refused(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_text("not a model")
    with pytest.raises(PfdeployError, match="not an ONNX model"):
        int8_from_onnx(bogus, DIGITS / "calib", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "kl"}, "unknown calibration method"),
    ({"target": "gpu"}, "unknown target"),
    ({"exclude": ["no_such_node"]}, "--exclude names no node"),
    ({"quantizer": "tflite"}, "unknown quantizer"),
    ({"quantizer": "modelopt", "target": "cpu"}, "TensorRT graphs only"),
])
def test_bad_options_are_refused(kwargs, match, fixture_onnx, tmp_path):
    with pytest.raises(PfdeployError, match=match):
        int8_from_onnx(fixture_onnx("r50_hybrid_digits"), DIGITS / "calib", tmp_path / "o.onnx", **kwargs)


def test_empty_or_unreadable_calibration_folder_is_refused(fixture_onnx, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PfdeployError, match="no images in"):
        int8_from_onnx(fixture_onnx("r50_hybrid_digits"), empty, tmp_path / "o.onnx", cache_dir=tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(PfdeployError, match="none of the 3 images"):
        int8_from_onnx(fixture_onnx("r50_hybrid_digits"), broken, tmp_path / "o.onnx", cache_dir=tmp_path)
    assert not (tmp_path / "o.onnx").exists()


def test_modelopt_quantizer_needs_modelopt(fixture_onnx, tmp_path):
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except ImportError:
        from pfdeploy.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match="nvidia-modelopt"):
            int8_from_onnx(fixture_onnx("r50_hybrid_digits"), DIGITS / "calib", tmp_path / "o.onnx",
                           num_images=16, quantizer="modelopt", cache_dir=tmp_path)
        assert not (tmp_path / "o.onnx").exists()
    else:  # pragma: no cover - ModelOpt installed: the graph it makes must stay accurate
        out = int8_from_onnx(fixture_onnx("r50_hybrid_digits"), DIGITS / "calib", tmp_path / "o.onnx",
                             num_images=64, quantizer="modelopt", cache_dir=tmp_path)
        assert placement_report(onnx.load(out))["int8"].get("Conv", 0) > 0


def test_uint8_nhwc_graph_calibrates_on_raw_bytes(tmp_path, top1):
    """A graph that normalizes inside itself is calibrated with the uint8 crops it takes."""
    from pfdeploy.calibration import load_labeled
    from pfdeploy.export import onnx_from_model

    fx = get_fixture("r50_hybrid_digits")
    fp32 = onnx_from_model(fx.model, tmp_path / "u8.onnx", checkpoint=fx.checkpoint, num_classes=10,
                           overrides=fx.overrides, preprocess=fx.preprocess, input_format="uint8-nhwc")
    out = int8_from_onnx(fp32, fx.calib_dir, num_images=128, target="cpu", cache_dir=tmp_path)
    assert out.name == "u8.int8-cpu.onnx"
    images, labels, _ = load_labeled(fx.val_dir, fx.preprocess, layout="nhwc")
    assert top1(out, images, labels) >= top1(fp32, images, labels) - 1.0
