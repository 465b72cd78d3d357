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


# --- the build flow on a simulated TensorRT builder (tests/engines/sim_trt.py) -----------------------


@pytest.fixture
def sim_builder(monkeypatch, env_h100):
    """A SimBuilderTensorRT installed where pfdeploy imports TensorRT, on the environment of an H100."""
    from sim_trt import SimBuilderTensorRT

    import pfdeploy.engines.build as build
    import pfdeploy.engines.environment as environment

    trt = SimBuilderTensorRT()
    monkeypatch.setattr(build, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(environment, "current_environment", lambda device=0: {**env_h100,
                                                                              "tensorrt_version": trt.__version__})
    return trt


def test_fp32_layers_stay_fp32_unless_tf32_is_asked_for(sim_builder, make_onnx):
    from pfdeploy.engines import engine_from_onnx

    onnx_path = make_onnx()
    result = engine_from_onnx(onnx_path, progress=False)
    assert not sim_builder.config.get_flag(sim_builder.BuilderFlag.TF32)  # TensorRT's default (on) was cleared
    assert result.manifest["build"]["tf32"] is False
    opted = engine_from_onnx(onnx_path, tf32=True, progress=False)
    assert not opted.reused and sim_builder.config.get_flag(sim_builder.BuilderFlag.TF32)
    assert opted.manifest["build"]["tf32"] is True


def test_timing_cache_is_created_then_updated(sim_builder, make_onnx, tmp_path):
    from sim_trt import cache_bytes

    from pfdeploy.engines import engine_from_onnx

    cache = tmp_path / "trt.cache"
    engine_from_onnx(make_onnx(), timing_cache=cache, progress=False)
    assert cache.read_bytes() == cache_bytes(entries=1)
    engine_from_onnx(make_onnx(), timing_cache=cache, force=True, progress=False)
    assert cache.read_bytes() == cache_bytes(entries=2)  # read back, used and rewritten


@pytest.mark.parametrize("content", ["another TensorRT's cache", "not a cache"])
def test_rejected_timing_cache_file_is_kept_and_reported(sim_builder, make_onnx, tmp_path, caplog, content):
    from sim_trt import cache_bytes

    from pfdeploy.engines import engine_from_onnx

    cache = tmp_path / "trt.cache"
    old = cache_bytes(version="10.3.0", entries=7) if content == "another TensorRT's cache" else b"garbage"
    cache.write_bytes(old)
    with caplog.at_level("WARNING", logger="pfdeploy.engines.build"):
        result = engine_from_onnx(make_onnx(), timing_cache=cache, progress=False)
    assert result.path.read_bytes() == b"SIMPLAN"  # the build went on, with a fresh cache
    assert sim_builder.config.timing_cache is not None and sim_builder.config.timing_cache.version == "10.9.0"
    assert cache.read_bytes() == old  # not overwritten with the fresh cache
    assert any("rejected the timing cache" in r.getMessage() and "left unchanged" in r.getMessage()
               for r in caplog.records)


def test_version_compatible_inspected_build(sim_builder, make_onnx):
    from pfdeploy.engines import engine_from_onnx

    result = engine_from_onnx(make_onnx(), version_compatible=True, inspect=True, progress=False)
    assert result.path.read_bytes() == b"SIMPLAN-VC"
    assert result.manifest["build"]["version_compatible"] is True
    assert layer_summary(json.loads((result.path.parent / result.manifest["layer_info"]).read_text()))["layers"] == 1


def test_failed_build_writes_nothing(sim_builder, make_onnx, tmp_path):
    from pfdeploy.engines import engine_from_onnx

    sim_builder.fail_build = True
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(PfdeployError, match="could not build the engine"):
        engine_from_onnx(make_onnx(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [*before, "tiny.onnx"]


def test_unknown_build_option_is_one_line(sim_builder, make_onnx):
    from pfdeploy.engines import engine_from_onnx

    with pytest.raises(PfdeployError, match="unknown build option.*opt_lvl"):
        engine_from_onnx(make_onnx(), opt_lvl=2)


def test_fp16_io_engine_records_its_io_for_the_runtime_and_triton(sim_builder, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from pfdeploy.engines import engine_from_onnx
    from pfdeploy.runtime.tensorrt_backend import spec_from_manifest as runtime_spec
    from pfdeploy.triton.spec import spec_from_engine

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"])],
        "fp16io", [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"pfdeploy.model": "tiny", "pfdeploy.input_format": "float-nchw"})
    onnx.save(model, str(tmp_path / "fp16io.onnx"))
    result = engine_from_onnx(tmp_path / "fp16io.onnx", batch=(1, 2, 4), progress=False)
    assert result.manifest["precision"] == "fp16"
    assert result.manifest["io"]["inputs"] == [{"name": "input", "dtype": "float16", "shape": [-1, 3, 8, 8]}]
    assert runtime_spec(result.manifest).dtype == "float16"  # the runtime takes float16 input
    (tmp_path / "fp16io.onnx").unlink()  # Triton reads the manifest's io, not the source ONNX
    spec = spec_from_engine(result.path)
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs] == [("input", "TYPE_FP16", (-1, 3, 8, 8))]
    assert [(t.name, t.dtype) for t in spec.outputs] == [("logits", "TYPE_FP16")]


def test_cli_tf32_opt_in_is_recorded(sim_builder, make_onnx, capsys):
    from pfdeploy.cli import main
    from pfdeploy.engines import read_manifest

    onnx_path = make_onnx()
    assert main(["build-engine", str(onnx_path), "--no-progress"]) == 0
    assert read_manifest(onnx_path.with_suffix(".plan"))["build"]["tf32"] is False
    assert main(["build-engine", str(onnx_path), "--tf32", "--no-progress"]) == 0
    assert read_manifest(onnx_path.with_suffix(".plan"))["build"]["tf32"] is True
    assert "built " in capsys.readouterr().out


# --- failures TensorRT reports by its result or by raising (issue 19, item 16) ------------------------------


def test_a_profile_tensorrt_rejects_is_an_error(sim_builder, make_onnx, tmp_path):
    from pfdeploy.engines import engine_from_onnx

    sim_builder.reject_profiles = True  # add_optimization_profile returns -1 (TensorRT: the profile is invalid)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(PfdeployError, match="optimization profile") as exc:
        engine_from_onnx(make_onnx(), progress=False)
    assert "\n" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [*before, "tiny.onnx"]  # no plan, no manifest


def test_a_timing_cache_tensorrt_raises_on_is_rejected_not_fatal(sim_builder, make_onnx, tmp_path, caplog):
    """TensorRT may raise from create_timing_cache on a damaged file (Polygraphy treats that as no cache):
    the build goes on with a fresh cache and the file is left as it was."""
    from pfdeploy.engines import engine_from_onnx

    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"SIMCACHE:10.9.0")  # truncated: the simulated TensorRT raises, as pybind11 does
    with caplog.at_level("WARNING", logger="pfdeploy.engines.build"):
        result = engine_from_onnx(make_onnx(), timing_cache=cache, progress=False)
    assert result.path.read_bytes() == b"SIMPLAN" and sim_builder.config.timing_cache is not None
    assert cache.read_bytes() == b"SIMCACHE:10.9.0"
    assert any("rejected the timing cache" in r.getMessage() for r in caplog.records)
