"""Parser-error reporting (pure) and real TensorRT builds (marked `tensorrt`, skipped without one)."""

from __future__ import annotations

import json

import pytest

from pfdeploy.engines.build import ParserIssue, format_parser_errors
from pfdeploy.engines.inspection import layer_summary, write_layer_info
from pfdeploy.errors import PfdeployError


def test_parser_error_names_node_and_operator():
    issues = [ParserIssue(5, "weird_node", "Frobnicate", "UNSUPPORTED_NODE", "No importer registered for op")]
    text = format_parser_errors("/x/model.onnx", issues)
    assert "model.onnx" in text and "node weird_node (Frobnicate): No importer registered" in text
    assert "\n" not in text


def test_parser_error_without_name_uses_index_and_truncates():
    issues = [ParserIssue(i, "", "", "INVALID_NODE", "") for i in range(5)]
    text = format_parser_errors("m.onnx", issues)
    assert "node #0: INVALID_NODE" in text and "(+2 more)" in text and "#4" not in text
    assert "no parser error" in format_parser_errors("m.onnx", [])


def test_layer_info_written_and_summarized(tmp_path):
    text = json.dumps(
        {
            "Layers": [
                {"LayerType": "CaskConvolution"},
                {"LayerType": "CaskPooling"},
                {"LayerType": "CaskConvolution"},
            ]
        }
    )
    path = write_layer_info(tmp_path / "m.plan", text)
    assert path.name == "m.plan.layers.json"
    assert layer_summary(json.loads(path.read_text())) == {
        "layers": 3,
        "layer_types": {"CaskConvolution": 2, "CaskPooling": 1},
    }
    with pytest.raises(PfdeployError, match="invalid JSON"):
        write_layer_info(tmp_path / "n.plan", "{oops")
    assert not (tmp_path / "n.plan.layers.json").exists()


# --- real TensorRT (skipped here with the reason from tests/conftest.py) ----------------------------


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_reuse_and_load(make_onnx, tmp_path, precision):
    import tensorrt as trt

    from pfdeploy.engines import check_loadable, engine_from_onnx, read_manifest
    from pfdeploy.engines.environment import current_environment

    onnx_path = make_onnx(precision=precision)
    cache = tmp_path / "trt.cache"
    result = engine_from_onnx(
        onnx_path, batch=(1, 2, 4), opt_level=0, timing_cache=cache, inspect=True, progress=False
    )
    assert not result.reused and result.path.stat().st_size > 0 and cache.stat().st_size > 0
    manifest = read_manifest(result.path)
    assert manifest["precision"] == precision and manifest["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert layer_summary(json.loads((tmp_path / manifest["layer_info"]).read_text()))["layers"] > 0
    assert check_loadable(manifest, current_environment())[0]
    assert engine_from_onnx(
        onnx_path, batch=(1, 2, 4), opt_level=0, timing_cache=cache, inspect=True, progress=False
    ).reused
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(result.path.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2
    assert tuple(engine.get_tensor_profile_shape("input", 0)[2]) == (4, 3, 8, 8)


@pytest.mark.tensorrt
def test_unsupported_operator_reports_node(make_onnx, tmp_path):
    from pfdeploy.engines import engine_from_onnx

    with pytest.raises(PfdeployError, match="weird_node"):
        engine_from_onnx(make_onnx(custom_op=True), progress=False)
    assert not (tmp_path / "tiny.plan").exists()


@pytest.mark.tensorrt
def test_version_and_hardware_compatible_build(make_onnx):
    from pfdeploy.engines import check_loadable, engine_from_onnx
    from pfdeploy.engines.environment import current_environment

    env = current_environment()
    if int(env["compute_capability"].split(".")[0]) < 8:
        pytest.skip("ampere+ hardware compatibility needs an Ampere or newer GPU")
    result = engine_from_onnx(
        make_onnx(), opt_level=0, hardware_compat="ampere+", version_compatible=True, progress=False
    )
    ok, reason = check_loadable(result.manifest, {**env, "compute_capability": "8.6", "gpu_name": "A10"})
    assert ok, reason
