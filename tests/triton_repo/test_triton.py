"""Triton model repositories: configs from real ONNX graphs and engine manifests, parsed with
Triton's own ModelConfig schema (tritonclient's model_config_pb2)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from pfdeploy.errors import PfdeployError
from pfdeploy.triton import (
    TritonOptions,
    config_from_spec,
    pbtxt_from_config,
    repository_from_artifacts,
    spec_from_onnx,
)
from pfdeploy.triton.spec import TENSORRT_PLATFORM, spec_from_artifact, spec_from_manifest
from pfdeploy.triton.validate import parse_model_config

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] ships Triton's schema")


def _onnx(path: Path, in_type=TensorProto.FLOAT, in_shape=("batch", 3, 32, 32), out_type=TensorProto.FLOAT,
          meta=None) -> Path:
    """A real, checkable ONNX graph: global average pool + flatten (logits of 3 'classes')."""
    out_batch = in_shape[0]
    nodes = []
    x = "input"
    if in_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["input"], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"]))
    nodes.append(helper.make_node("Cast", ["flat"], ["logits"], to=out_type))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input", in_type, list(in_shape))],
        [helper.make_tensor_value_info("logits", out_type, [out_batch, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (meta or {"pfdeploy.model": "toy", "pfdeploy.precision": "fp32"}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _parsed(config: dict):
    return parse_model_config(pbtxt_from_config(config, ("a comment",)))


@pytest.mark.parametrize(
    "in_type, out_type, triton_in, triton_out",
    [
        (TensorProto.FLOAT, TensorProto.FLOAT, "TYPE_FP32", "TYPE_FP32"),
        (TensorProto.FLOAT16, TensorProto.FLOAT16, "TYPE_FP16", "TYPE_FP16"),
        (TensorProto.UINT8, TensorProto.FLOAT, "TYPE_UINT8", "TYPE_FP32"),
    ],
)
def test_onnx_config_parses_with_triton_schema(tmp_path, in_type, out_type, triton_in, triton_out):
    from tritonclient.grpc import model_config_pb2 as pb

    spec = spec_from_onnx(_onnx(tmp_path / "m.onnx", in_type, out_type=out_type))
    config = config_from_spec(spec, "m", TritonOptions(max_batch=16, instances=2, dynamic_batching=True))
    parsed = _parsed(config)
    assert parsed.platform == "onnxruntime_onnx"
    assert parsed.max_batch_size == 16
    assert [i.name for i in parsed.input] == ["input"] and [o.name for o in parsed.output] == ["logits"]
    assert list(parsed.input[0].dims) == [3, 32, 32]  # batch axis left to Triton
    assert list(parsed.output[0].dims) == [3]
    assert pb.DataType.Name(parsed.input[0].data_type) == triton_in
    assert pb.DataType.Name(parsed.output[0].data_type) == triton_out
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 16]
    assert parsed.instance_group[0].count == 2
    assert parsed.instance_group[0].kind == pb.ModelInstanceGroup.KIND_AUTO
    assert not parsed.optimization.cuda.graphs  # CUDA graphs are for engines only


def test_fixed_batch_onnx_has_no_batching(tmp_path):
    spec = spec_from_onnx(_onnx(tmp_path / "fixed.onnx", in_shape=(1, 3, 8, 8)))
    assert not spec.batch_dynamic
    parsed = _parsed(config_from_spec(spec, "fixed", TritonOptions(device="cpu")))
    assert parsed.max_batch_size == 0
    assert list(parsed.input[0].dims) == [1, 3, 8, 8]  # full shape when Triton does not batch
    with pytest.raises(PfdeployError, match="not a dynamic batch axis"):
        config_from_spec(spec, "fixed", TritonOptions(max_batch=8))
    with pytest.raises(PfdeployError, match="dynamic batching needs a batch axis"):
        config_from_spec(spec, "fixed", TritonOptions(dynamic_batching=True))


def _engine(tmp_path: Path, batch=(1, 8, 32), in_shape=("batch", 3, 32, 32), io=None) -> Path:
    """An ONNX graph plus the manifest the engine builder writes beside its plan (`io`: its io section;
    None, as in manifests written before it existed, sends Triton to the source ONNX).

    No TensorRT here, so the plan bytes are a placeholder: Triton's config never reads them, and
    the repository test checks that they match the manifest and are copied unchanged.
    """
    from pfdeploy._io import sha256_file
    from pfdeploy.engines.manifest import build_manifest, write_manifest
    from pfdeploy.engines.onnx_facts import onnx_facts
    from pfdeploy.engines.profile import profile_shapes

    src = _onnx(tmp_path / "toy.int8.onnx", in_shape=in_shape,
                meta={"pfdeploy.model": "toy", "pfdeploy.precision": "int8"})
    plan = tmp_path / "toy.int8.plan"
    plan.write_bytes(b"placeholder plan: no TensorRT on this machine")
    facts = onnx_facts(src)
    manifest = build_manifest(
        plan_path=plan, plan_sha256=sha256_file(plan), plan_bytes=plan.stat().st_size, facts=facts,
        shapes=profile_shapes(facts.inputs, batch), options={}, environment={}, build_seconds=0.0, key="k",
        io=io,
    )
    write_manifest(plan, manifest)
    return plan


def test_engine_config_has_cuda_graphs_and_profile_bounds(tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    from pfdeploy.triton import spec_from_engine

    spec = spec_from_engine(_engine(tmp_path))
    assert spec.platform == TENSORRT_PLATFORM and spec.profile == (1, 8, 32)
    assert spec.metadata["pfdeploy.precision"] == "int8"
    parsed = _parsed(config_from_spec(spec, "toy", TritonOptions(dynamic_batching=True, instances=3)))
    assert parsed.platform == "tensorrt_plan"
    assert parsed.max_batch_size == 32  # the profile's max
    assert list(parsed.input[0].dims) == [3, 32, 32] and list(parsed.output[0].dims) == [3]
    assert pb.DataType.Name(parsed.input[0].data_type) == "TYPE_FP32"
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 32]  # profile opt and max
    assert parsed.optimization.cuda.graphs
    assert [g.batch_size for g in parsed.optimization.cuda.graph_spec] == [8, 32]
    assert parsed.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert parsed.instance_group[0].count == 3
    with pytest.raises(PfdeployError, match="outside the engine's batch profile"):
        config_from_spec(spec, "toy", TritonOptions(max_batch=64))
    with pytest.raises(PfdeployError, match="GPU only"):
        config_from_spec(spec, "toy", TritonOptions(device="cpu"))


def test_engine_repository_and_missing_source_onnx(tmp_path):
    plan = _engine(tmp_path, batch=(1, 4, 16))
    models = repository_from_artifacts([plan], tmp_path / "repo", TritonOptions(max_batch=16))
    assert models[0].name == "toy_int8_trt"
    assert models[0].model_path.name == "model.plan"
    assert models[0].model_path.read_bytes() == plan.read_bytes()
    assert parse_model_config(models[0].config_path.read_text()).max_batch_size == 16
    (tmp_path / "toy.int8.onnx").write_bytes(b"changed")
    with pytest.raises(PfdeployError, match="sha256 differs"):
        repository_from_artifacts([plan], tmp_path / "repo2")
    (tmp_path / "toy.int8.onnx").unlink()
    with pytest.raises(PfdeployError, match="not beside the engine"):
        repository_from_artifacts([plan], tmp_path / "repo2")
    assert not (tmp_path / "repo2").exists()


def test_engine_whose_plan_does_not_match_its_manifest_is_refused(tmp_path):
    plan = _engine(tmp_path)
    plan.write_bytes(b"another plan")  # replaced after the build: the manifest no longer vouches for it
    with pytest.raises(PfdeployError, match="does not match its manifest .*--force"):
        repository_from_artifacts([plan], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_built_manifest_io_is_what_triton_reads(tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    from pfdeploy.engines.manifest import io_from_onnx

    src = _onnx(tmp_path / "src.onnx", TensorProto.FLOAT16, out_type=TensorProto.FLOAT16)
    plan = _engine(tmp_path, io=io_from_onnx(src))  # the io of an FP16-IO graph, as build-engine records it
    (tmp_path / "toy.int8.onnx").unlink()  # so the source ONNX cannot be what is read
    parsed = _parsed(config_from_spec(spec_from_artifact(plan), "toy"))
    assert parsed.input[0].data_type == parsed.output[0].data_type == pb.TYPE_FP16
    assert list(parsed.input[0].dims) == [3, 32, 32] and list(parsed.output[0].dims) == [3]


def test_manifest_io_section_is_used_when_present(tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    manifest = {
        "io": {
            "inputs": [{"name": "input", "dtype": "uint8", "shape": [-1, 224, 224, 3]}],
            "outputs": [{"name": "logits", "dtype": "float16", "shape": [-1, 1000]}],
        },
        "batch": {"min": 1, "opt": 8, "max": 32},
    }
    spec = spec_from_manifest(manifest, tmp_path / "x.plan")
    parsed = _parsed(config_from_spec(spec, "x"))
    assert list(parsed.input[0].dims) == [224, 224, 3]
    assert parsed.input[0].data_type == pb.TYPE_UINT8
    assert parsed.output[0].data_type == pb.TYPE_FP16


def test_repository_layout_and_contents(tmp_path):
    a = _onnx(tmp_path / "toy.fp32.onnx")
    b = _onnx(tmp_path / "toy.fp16.onnx", TensorProto.FLOAT16, out_type=TensorProto.FLOAT16)
    repo = tmp_path / "repo"
    models = repository_from_artifacts([a, b], repo, TritonOptions(max_batch=4, dynamic_batching=True))
    assert [m.name for m in models] == ["toy_fp32", "toy_fp16"]
    for model, src in zip(models, (a, b), strict=True):
        assert model.model_path == repo / model.name / "1" / "model.onnx"
        assert model.model_path.read_bytes() == src.read_bytes()
        parsed = parse_model_config(model.config_path.read_text())
        assert parsed.name == model.name  # Triton requires name == directory name
        assert parsed.max_batch_size == 4
    assert not list(repo.rglob("*.tmp"))


def test_repository_bad_input_writes_nothing(tmp_path):
    good = _onnx(tmp_path / "good.onnx")
    fixed = _onnx(tmp_path / "fixed.onnx", in_shape=(1, 3, 8, 8))
    repo = tmp_path / "repo"
    with pytest.raises(PfdeployError, match="not a dynamic batch axis"):
        repository_from_artifacts([good, fixed], repo, TritonOptions(max_batch=8))
    assert not repo.exists()
    with pytest.raises(PfdeployError, match="unknown artifact type"):
        repository_from_artifacts([tmp_path / "model.pt"], repo)
    with pytest.raises(PfdeployError, match="map to the Triton model name"):
        repository_from_artifacts([good, good], repo)


def test_openvino_backend_config_per_artifact(tmp_path, capsys):
    """`--backend openvino`: Triton's OpenVINO backend on CPU instances, beside the ONNX Runtime model."""
    from pfdeploy.cli import main

    a = _onnx(tmp_path / "toy.int8.onnx")
    repo = tmp_path / "repo"
    assert main(["triton", str(a), str(a), "--repo", str(repo), "--backend", "onnxruntime", "--backend", "openvino",
                 "--dynamic-batching"]) == 0
    ort = parse_model_config((repo / "toy_int8" / "config.pbtxt").read_text())
    ov = parse_model_config((repo / "toy_int8_openvino" / "config.pbtxt").read_text())
    assert (ort.platform, ort.backend) == ("onnxruntime_onnx", "")
    assert (ov.platform, ov.backend, ov.default_model_filename) == ("", "openvino", "model.onnx")
    assert (repo / "toy_int8_openvino" / "1" / "model.onnx").read_bytes() == a.read_bytes()
    assert [g.kind for g in ov.instance_group] == [ov.instance_group[0].KIND_CPU]
    assert {k: v.string_value for k, v in ov.parameters.items()} == {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
    assert ov.max_batch_size == 32 and list(ov.input[0].dims) == [3, 32, 32]
    assert "openvino" in capsys.readouterr().out
    several = repository_from_artifacts([a], tmp_path / "r2", TritonOptions(instances=3), backends=["openvino"])
    params = parse_model_config(several[0].config_path.read_text()).parameters
    assert (params["NUM_STREAMS"].string_value, params["PERFORMANCE_HINT"].string_value) == ("3", "THROUGHPUT")
    with pytest.raises(PfdeployError, match="runs on the CPU"):
        repository_from_artifacts([a], tmp_path / "r3", TritonOptions(device="gpu"), backends=["openvino"])
    with pytest.raises(PfdeployError, match="one for all or one per artifact"):
        repository_from_artifacts([a, a, a], tmp_path / "r3", backends=["openvino", "onnxruntime"])
    assert not (tmp_path / "r3").exists()


def test_validator_rejects_what_triton_would():
    with pytest.raises(PfdeployError, match="ModelConfig schema"):
        parse_model_config('name: "m"\nmax_batch: 3\n')  # the field is max_batch_size
    with pytest.raises(PfdeployError, match="ModelConfig schema"):
        parse_model_config('name: "m"\ninput { data_type: TYPE_FLOAT32 }\n')  # not a Triton DataType


def test_repository_files_are_readable_by_the_server_whatever_the_umask(tmp_path):
    """The server often runs as another user: 0644 even under umask 077 (other artifacts follow the umask)."""
    import os
    import stat

    source = _onnx(tmp_path / "m.onnx")
    previous = os.umask(0o077)
    try:
        [model] = repository_from_artifacts([source], tmp_path / "repo")
    finally:
        os.umask(previous)
    for path in (model.config_path, model.model_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
