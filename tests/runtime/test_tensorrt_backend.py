"""TensorRT backend: manifest checks before deserializing (here); real engines on a GPU with TensorRT."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pfdeploy._io import sha256_file
from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.runtime import load
from pfdeploy.runtime.bench import benchmark
from pfdeploy.runtime.tensorrt_backend import check_plan, metadata_from_manifest, spec_from_manifest


def manifest(fmt="float-nchw", plan_sha=None) -> dict:
    shape = [8, 224, 224, 3] if fmt == "uint8-nhwc" else [8, 3, 224, 224]
    return {
        "format": "pfdeploy-engine-manifest", "manifest_version": 1,
        "plan": {"file": "m.plan", "sha256": plan_sha, "bytes": 4},
        "onnx": {"metadata": {"pfdeploy.model": "r50_hybrid", "pfdeploy.precision": "fp16",
                              "pfdeploy.input_format": fmt}},
        "input_format": fmt, "precision": "int8",
        "profile": {"input": {"min": [1, *shape[1:]], "opt": shape, "max": shape}},
        "batch": {"min": 1, "opt": 8, "max": 8},
        "environment": {"tensorrt_version": "10.9.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"},
    }


@pytest.mark.parametrize("fmt,shape,dtype", [("float-nchw", (None, 3, 224, 224), "float32"),
                                             ("uint8-nhwc", (None, 224, 224, 3), "uint8")])
def test_spec_from_manifest(fmt, shape, dtype):
    spec = spec_from_manifest(manifest(fmt))
    assert (spec.name, spec.shape, spec.dtype, spec.min_batch, spec.max_batch) == ("input", shape, dtype, 1, 8)


def test_metadata_from_manifest_prefers_the_engine_precision():
    meta = metadata_from_manifest(manifest())
    assert meta["pfdeploy.model"] == "r50_hybrid" and meta["pfdeploy.precision"] == "int8"
    assert meta["pfdeploy.engine.gpu_name"] == "NVIDIA H100"
    assert json.loads(meta["pfdeploy.engine.batch"])["max"] == 8


def test_manifest_without_profile_is_refused():
    with pytest.raises(PfdeployError, match="single-input profile"):
        spec_from_manifest({**manifest(), "profile": {}})


def test_replaced_plan_is_refused_before_tensorrt(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(PfdeployError, match="does not match its manifest"):
        check_plan(plan, manifest(plan_sha="0" * 64), {})


def test_environment_mismatch_is_refused(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan")
    here = {"tensorrt_version": "10.9.0", "compute_capability": "8.0", "gpu_name": "NVIDIA A100"}
    with pytest.raises(PfdeployError, match="cannot load .* here"):
        check_plan(plan, manifest(plan_sha=sha256_file(plan)), here)


def test_engine_without_manifest_is_refused(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(PfdeployError, match="no manifest"):
        load(plan)


def test_engine_on_a_machine_without_tensorrt(tmp_path):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"plan")
    (tmp_path / "m.plan.json").write_text(json.dumps(manifest(plan_sha=sha256_file(plan))))
    with pytest.raises(MissingDependencyError):
        load(plan)
    with pytest.raises(PfdeployError, match="device='cuda'"):
        load(plan, device="cpu")


@pytest.mark.tensorrt
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_matches_onnxruntime(cheap_onnx, tmp_path, cuda_graph):
    import torch

    from pfdeploy.engines import engine_from_onnx

    onnx_path = cheap_onnx("r50_hybrid")
    plan = engine_from_onnx(onnx_path, tmp_path / "m.plan", batch=(1, 4, 8)).path
    with load(onnx_path) as ort, load(plan, cuda_graph=cuda_graph) as trt:
        assert trt.backend == "tensorrt" and trt.input_spec.max_batch == 8 and not trt.thread_safe
        for batch in (1, 5, 8, 5):
            x = ort.input_spec.example(batch, seed=batch)
            np.testing.assert_allclose(trt(x), ort(x), atol=1e-3, rtol=1e-3)
        x = ort.input_spec.example(3)
        np.testing.assert_allclose(trt(torch.from_numpy(x).cuda()), ort(x), atol=1e-3, rtol=1e-3)
        run = trt.device_fn(x)
        run()
        with pytest.raises(PfdeployError, match="batch range"):
            trt(ort.input_spec.example(9))


@pytest.fixture
def sim_engine(monkeypatch, tmp_path):
    """A plan + manifest run by the simulated TensorRT/CUDA runtime (tests/runtime/sim_gpu.py)."""
    from sim_gpu import SimCudart, SimTensorRT

    import pfdeploy.engines.environment as environment
    from pfdeploy.runtime import cuda_memory

    cudart = SimCudart()
    trt = SimTensorRT(cudart, image_shape=(3, 8, 8), classes=5, max_batch=8)
    env = {"tensorrt_version": "10.9.0", "compute_capability": "9.0", "gpu_name": "NVIDIA H100"}
    monkeypatch.setattr(cuda_memory, "cudart", lambda: cudart)
    monkeypatch.setattr(environment, "require_tensorrt", lambda: trt)
    monkeypatch.setattr(environment, "current_environment", lambda device=0: env)
    plan = tmp_path / "sim.plan"
    plan.write_bytes(b"SIMPLAN")
    data = manifest(plan_sha=sha256_file(plan))
    data["profile"] = {"input": {"min": [1, 3, 8, 8], "opt": [8, 3, 8, 8], "max": [8, 3, 8, 8]}}
    data["environment"] = env
    (tmp_path / "sim.plan.json").write_text(json.dumps(data))
    return plan, cudart, trt


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_session_flow_on_the_simulated_runtime(sim_engine, cuda_graph):
    import torch

    plan, cudart, trt = sim_engine
    session = load(plan, cuda_graph=cuda_graph)
    assert session.device == "cuda" and session.input_spec.max_batch == 8 and not session.thread_safe
    assert session.metadata["pfdeploy.precision"] == "int8"
    assert cudart.calls[:4] == ["cudaMallocHost", "cudaMalloc", "cudaMallocHost", "cudaMalloc"]
    for batch in (1, 5, 8, 5, 1):
        x = session.input_spec.example(batch, seed=batch)
        np.testing.assert_allclose(session(x), x.reshape(batch, -1) @ trt.weight, rtol=1e-5, atol=1e-5)
    x = session.input_spec.example(3)
    np.testing.assert_allclose(session(torch.from_numpy(x)), x.reshape(3, -1) @ trt.weight, rtol=1e-5, atol=1e-5)
    assert ("graph launch" in cudart.calls) == cuda_graph
    assert cudart.calls.count("capture") == (4 if cuda_graph else 0)  # one graph per batch size: 1, 5, 8, 3
    before = trt.executions
    run = session.device_fn(x)
    run()
    run()
    assert trt.executions == before + 2
    with pytest.raises(PfdeployError, match="batch range 1..8"):
        session(session.input_spec.example(9))
    report = benchmark([("trt", session)], batches=(2, 16), seconds=0.01, warmup=1)
    assert {(r["batch"], r["mode"]) for r in report["results"]} == {(2, "end_to_end"), (2, "device"),
                                                                     (16, "end_to_end")}
    assert "skipped" in report["results"][-1]  # batch 16 > profile max 8, reported not dropped
    session.close()
    assert cudart.leaks() == 0  # buffers, stream and graphs freed once


def test_undeserializable_plan_is_refused(sim_engine):
    plan, _, _ = sim_engine
    plan.write_bytes(b"garbage")
    data = json.loads(plan.with_suffix(".plan.json").read_text())
    data["plan"]["sha256"] = sha256_file(plan)
    plan.with_suffix(".plan.json").write_text(json.dumps(data))
    with pytest.raises(PfdeployError, match="could not deserialize"):
        load(plan)
