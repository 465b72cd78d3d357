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


@pytest.mark.tensorrt
def test_real_version_compatible_engine_takes_a_misaligned_cuda_view(cheap_onnx, tmp_path):
    import torch
    from export_helpers import assert_close

    from pfdeploy.engines import engine_from_onnx

    onnx_path = cheap_onnx("r50_hybrid")
    plan = engine_from_onnx(onnx_path, tmp_path / "vc.plan", batch=(1, 4, 8), version_compatible=True,
                            progress=False).path
    with load(onnx_path) as ort, load(plan, cuda_graph=True) as trt:  # opens only with host code allowed
        x = ort.input_spec.example(5)
        buffer = torch.empty(x.size + 1, device="cuda")
        view = buffer[1:].view(x.shape)  # 4 bytes past cudaMalloc's alignment: TensorRT cannot bind it
        view.copy_(torch.from_numpy(x))
        assert view.data_ptr() % 256 != 0
        assert_close(ort(x), trt(view), rel=1e-3)
        assert_close(ort(x), trt(x), rel=1e-3)


# --- the session logic on the simulated CUDA runtime and TensorRT (tests/runtime/sim_gpu.py) ---------


@pytest.fixture
def sim_engine(monkeypatch, tmp_path):
    """make(plan=b"SIMPLAN", version_compatible=False, io_dtype=None, built_on=None, **SimTensorRT kwargs)
    -> (plan path, SimCudart, SimTensorRT): a plan + manifest (built in environment `built_on`, default an H100)
    run by the simulated runtime."""
    from sim_gpu import SimCudart, SimTensorRT

    import pfdeploy.engines.environment as environment
    from pfdeploy.runtime import cuda_memory

    env = {"tensorrt_version": "10.9.0", "compute_capability": "9.0", "gpu_name": "NVIDIA H100"}
    cudart = SimCudart()
    monkeypatch.setattr(cuda_memory, "cudart", lambda: cudart)
    monkeypatch.setattr(environment, "current_environment", lambda device=0: env)

    def make(plan_bytes=b"SIMPLAN", version_compatible=False, io_dtype=None, built_on=None, **kwargs):
        trt = SimTensorRT(cudart, image_shape=(3, 8, 8), classes=5, max_batch=8, **kwargs)
        monkeypatch.setattr(environment, "require_tensorrt", lambda: trt)
        plan = tmp_path / "sim.plan"
        plan.write_bytes(plan_bytes)
        data = manifest(plan_sha=sha256_file(plan))
        data["profile"] = {"input": {"min": [1, 3, 8, 8], "opt": [8, 3, 8, 8], "max": [8, 3, 8, 8]}}
        data["environment"] = built_on or env
        data["build"] = {"version_compatible": version_compatible, "hardware_compat": "none"}
        if io_dtype is not None:
            data["io"] = {"inputs": [{"name": "input", "dtype": io_dtype, "shape": [-1, 3, 8, 8]}],
                          "outputs": [{"name": "logits", "dtype": io_dtype, "shape": [-1, 5]}]}
        (tmp_path / "sim.plan.json").write_text(json.dumps(data))
        return plan, cudart, trt

    return make


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_session_flow_on_the_simulated_runtime(sim_engine, cuda_graph):
    import torch

    plan, cudart, trt = sim_engine()
    session = load(plan, cuda_graph=cuda_graph)
    assert session.device == "cuda" and session.input_spec.max_batch == 8 and not session.thread_safe
    assert session.metadata["pfdeploy.precision"] == "int8"
    assert cudart.calls[:4] == ["cudaMallocHost", "cudaMalloc", "cudaMallocHost", "cudaMalloc"]
    for batch in (1, 5, 8, 5, 1):
        x = session.input_spec.example(batch, seed=batch)
        np.testing.assert_allclose(session(x), trt.logits(x), rtol=1e-5, atol=1e-5)
    x = session.input_spec.example(3)
    np.testing.assert_allclose(session(torch.from_numpy(x)), trt.logits(x), rtol=1e-5, atol=1e-5)
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


def test_simulated_runtime_hands_out_real_handle_types(sim_engine):
    from sim_gpu import REAL_HANDLES, cudaGraphExec_t, cudaStream_t

    plan, cudart, _ = sim_engine()
    with load(plan, cuda_graph=True) as session:
        session(session.input_spec.example(2))
        handles = [session._stream.handle, *(g._exec for g in session._graphs.values())]
    assert not any(isinstance(h, int) for h in handles)  # cuda-python hands out objects, not ints
    assert isinstance(handles[0], cudaStream_t) and isinstance(handles[1], cudaGraphExec_t)
    try:
        from cuda.bindings import runtime  # noqa: F401

        assert REAL_HANDLES  # cuda-bindings is here: the sim hands out its handle classes
    except ImportError:
        assert not REAL_HANDLES


def test_undeserializable_plan_is_refused(sim_engine):
    plan, _, _ = sim_engine(plan_bytes=b"garbage")
    with pytest.raises(PfdeployError, match="could not deserialize .*rebuild"):
        load(plan)


def test_version_compatible_plan_is_opened_with_host_code_allowed(sim_engine):
    plan, _, trt = sim_engine(plan_bytes=b"SIMPLAN-VC", version_compatible=True)
    with load(plan) as session:
        x = session.input_spec.example(2)
        np.testing.assert_allclose(session(x), trt.logits(x), rtol=1e-5, atol=1e-5)
    assert trt.runtimes[-1].engine_host_code_allowed


def test_plain_plan_does_not_allow_host_code(sim_engine):
    plan, _, trt = sim_engine()
    load(plan).close()
    assert not trt.runtimes[-1].engine_host_code_allowed  # only a version-compatible plan needs it


def test_version_compatible_plan_that_fails_is_not_blamed_on_this_machine(sim_engine):
    plan, _, _ = sim_engine(plan_bytes=b"not a plan", version_compatible=True)
    with pytest.raises(PfdeployError, match="version-compatible") as exc:
        load(plan)
    assert "rebuild" not in str(exc.value)


@pytest.mark.parametrize("failure", ["fail_enqueue", "invalidate_capture"])
def test_failed_graph_capture_falls_back_and_never_returns_stale_logits(sim_engine, caplog, failure):
    plan, cudart, trt = sim_engine()
    if failure == "fail_enqueue":
        trt.fail_enqueue = "capture"  # execute_async_v3 returns False inside the capture
    else:
        trt.invalidate_capture = True  # the capture is invalidated: cudaStreamEndCapture fails
    session = load(plan, cuda_graph=True)
    with caplog.at_level("WARNING", logger="pfdeploy.runtime.tensorrt_backend"):
        for seed in range(4):  # same shape: a replayed empty graph would return the previous batch's logits
            x = session.input_spec.example(4, seed=seed)
            np.testing.assert_allclose(session(x), trt.logits(x), rtol=1e-5, atol=1e-5)
        x = session.input_spec.example(2)
        np.testing.assert_allclose(session(x), trt.logits(x), rtol=1e-5, atol=1e-5)
        run = session.device_fn(x)
        before = trt.executions
        run()
        assert trt.executions == before + 1
    warnings = [r for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warnings) == 1 and "plain enqueue" in warnings[0].getMessage()  # said once
    assert "graph launch" not in cudart.calls
    assert int(cudart.cudaPeekAtLastError()[0]) == 0  # the capture's error was cleared
    session.close()
    assert cudart.leaks() == 0


def test_failed_enqueue_is_an_error(sim_engine):
    plan, _, trt = sim_engine()
    trt.fail_enqueue = "always"
    for cuda_graph in (False, True):
        with load(plan, cuda_graph=cuda_graph) as session, pytest.raises(PfdeployError, match="execute_async_v3"):
            session(session.input_spec.example(2))


def test_misaligned_device_memory_is_refused_not_ignored(sim_engine):
    plan, cudart, _ = sim_engine()
    cudart.misalign = True  # set_tensor_address returns False for the session's own buffers
    with pytest.raises(PfdeployError, match="256-byte"):
        load(plan)
    assert cudart.leaks() == 0


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_allocation_failure_midway_frees_what_was_made(sim_engine, fail_at):
    plan, cudart, _ = sim_engine()
    cudart.fail_alloc_at = fail_at  # 4 allocations: pinned + device, for the input and the output
    with pytest.raises(PfdeployError, match="cudaErrorMemoryAllocation"):
        load(plan)
    assert cudart.allocations == fail_at and cudart.leaks() == 0


def test_fp16_io_engine_takes_its_input_dtype_from_the_manifest(sim_engine):
    plan, _, trt = sim_engine(io_dtype="float16", input_dtype=np.float16, output_dtype=np.float16)
    with load(plan) as session:
        assert session.input_spec.dtype == "float16"
        x = session.input_spec.example(3)
        assert x.dtype == np.float16
        out = session(x)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, trt.logits(x).astype(np.float32), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("offset, bound", [(0, True), (4 * 3 * 8 * 8 * 4 + 16, False)])
def test_device_memory_is_bound_only_when_aligned(sim_engine, offset, bound):
    """A batch already in device memory (a CUDA tensor's data_ptr) is bound in place when 256-byte
    aligned, else copied into the session's own buffer first; the logits are right either way."""
    from sim_gpu import write

    plan, cudart, trt = sim_engine()
    with load(plan) as session:
        ptr = int(cudart.cudaMalloc(8 * 3 * 8 * 8 * 4 + 512)[1])
        x = session.input_spec.example(3, seed=7)
        write(ptr + offset, x)
        np.testing.assert_allclose(session._run_device_pointer(ptr + offset, x.shape), trt.logits(x),
                                   rtol=1e-5, atol=1e-5)
        assert ("memcpy cudaMemcpyDeviceToDevice" in cudart.calls) == (not bound)
        y = session.input_spec.example(3, seed=8)
        np.testing.assert_allclose(session(y), trt.logits(y), rtol=1e-5, atol=1e-5)  # own buffer bound again
        cudart.cudaFree(ptr)
    assert cudart.leaks() == 0


def test_deploy_judges_an_int8_engine_on_real_images_against_its_onnx(sim_engine, tmp_path):
    """deploy's engine check: the engine against the ONNX graph it was compiled from, on noise,
    real-looking and --val-data images; INT8 is judged on the --val-data images, as the ONNX graphs are."""
    from types import SimpleNamespace

    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    from pfdeploy.deploy.steps import verify_engine

    plan, _, trt = sim_engine()
    graph = helper.make_graph(  # what the simulated engine computes: flatten(x) @ weight
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "sim", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(trt.weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"pfdeploy.model": "sim", "pfdeploy.precision": "int8",
                                   "pfdeploy.input_format": "float-nchw",
                                   "pfdeploy.preprocess": json.dumps({"size": 8, "crop_pct": 1.0})})
    onnx.save(model, str(tmp_path / "sim.onnx"))
    val = tmp_path / "val" / "cls"
    val.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(val / f"{i}.png")
    opts = SimpleNamespace(engine_batch=(1, 4, 8), verify_samples=3, val_data=tmp_path / "val")
    result = verify_engine(opts, plan, tmp_path / "sim.onnx", "int8")
    assert set(result["sources"]) == {"random", "real-looking", "data"} and result["judged_on"] == ["data"]
    assert result["passed"] and result["sources"]["data"]["samples"] == 3
    assert result["sources"]["data"]["max_rel"] < 1e-5  # the engine computes what its ONNX graph does
    assert "compiled from" in result["reference_kind"]
    without = verify_engine(SimpleNamespace(**{**vars(opts), "val_data": None}), plan, tmp_path / "sim.onnx", "int8")
    assert without["judged_on"] == ["random", "real-looking"]  # no real images: every source decides


def test_report_says_what_an_engine_was_checked_against():
    from pfdeploy.deploy.report import _artifact_section

    stats = {"samples": 2, "max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0, "top1": 1.0, "top5": 1.0, "passed": True}
    engine = {"file": "m.int8.plan", "format": "tensorrt", "precision": "int8", "bytes": 10, "sha256": "0" * 64,
              "verify": {"sources": {"data": stats}, "judged_on": ["data"], "passed": True}}
    text = "\n".join(_artifact_section(engine))
    assert "against the ONNX graph it was compiled from (itself verified against PyTorch):" in text
    assert "against PyTorch:" not in text
    graph = {**engine, "file": "m.int8.onnx", "format": "onnx"}
    assert "Verification against PyTorch:" in "\n".join(_artifact_section(graph))


# --- CUDA graphs of several shapes, devices, capture that cannot begin (issue 19, items 12, 13, 16) --------


def test_each_captured_batch_size_replays_on_an_execution_context_of_its_own(sim_engine):
    """A graph captured for batch 4 and replayed after batch 8 ran: with one context for both, the replay
    reads batch 8's launch parameters (tests/runtime/sim_gpu.py) and computes garbage."""
    plan, cudart, trt = sim_engine()
    with load(plan, cuda_graph=True) as session:
        for step, batch in enumerate((4, 8, 4, 8, 2, 4, 2)):
            x = session.input_spec.example(batch, seed=step)
            out = session(x)
            assert np.isfinite(out).all(), (step, batch)
            np.testing.assert_allclose(out, trt.logits(x), rtol=1e-5, atol=1e-5)
        captured = [c for c in trt.contexts if c.captured_shapes]
        assert sorted(next(iter(c.captured_shapes))[0] for c in captured) == [2, 4, 8]
        assert all(len(c.captured_shapes) == 1 for c in captured)  # one shape per captured context
        assert cudart.calls.count("capture") == 3 and cudart.calls.count("graph launch") == 7  # every call
    assert cudart.leaks() == 0


def test_batch_sizes_past_the_graph_limit_run_with_plain_enqueue(sim_engine, monkeypatch):
    from pfdeploy.runtime import tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, "MAX_GRAPH_SHAPES", 2)
    plan, cudart, trt = sim_engine()
    with load(plan, cuda_graph=True) as session:
        for batch in (1, 2, 3, 3, 1):
            x = session.input_spec.example(batch, seed=batch)
            np.testing.assert_allclose(session(x), trt.logits(x), rtol=1e-5, atol=1e-5)
    assert cudart.calls.count("capture") == 2 and len(trt.contexts) == 3  # the session's own + one per graph
    assert cudart.leaks() == 0


def test_a_capture_that_cannot_begin_falls_back_to_plain_enqueue(sim_engine, caplog):
    plan, cudart, trt = sim_engine()
    cudart.fail_begin_capture = True  # cudaStreamBeginCapture fails (cudaErrorStreamCaptureUnsupported)
    with caplog.at_level("WARNING", logger="pfdeploy.runtime.tensorrt_backend"), load(plan, cuda_graph=True) as s:
        for batch in (2, 2, 3):
            x = s.input_spec.example(batch, seed=batch)
            np.testing.assert_allclose(s(x), trt.logits(x), rtol=1e-5, atol=1e-5)
    assert "graph launch" not in cudart.calls and int(cudart.cudaPeekAtLastError()[0]) == 0
    assert len([r for r in caplog.records if "plain enqueue" in r.getMessage()]) == 1
    assert cudart.leaks() == 0


H100 = {"tensorrt_version": "10.9.0", "compute_capability": "9.0", "gpu_name": "NVIDIA H100"}
A100 = {"tensorrt_version": "10.9.0", "compute_capability": "8.0", "gpu_name": "NVIDIA A100"}


@pytest.fixture
def two_gpus(sim_engine, monkeypatch):
    """An engine built on an A100 (device 1) of a machine whose device 0 is an H100."""
    import pfdeploy.engines.environment as environment

    plan, cudart, trt = sim_engine(built_on=A100)
    cudart.device_count = 2
    monkeypatch.setattr(environment, "current_environment", lambda device=0: (H100, A100)[device])
    return plan, cudart, trt


def test_loadability_is_checked_on_the_device_the_engine_runs_on(two_gpus):
    plan, cudart, trt = two_gpus
    with pytest.raises(PfdeployError, match="compute capability 8.0 .* has 9.0"):
        load(plan)  # this thread's device is 0, the H100: the A100 engine cannot run there
    cudart.cudaSetDevice(1)
    with load(plan) as session:  # the engine deserializes on device 1, and is checked against device 1
        x = session.input_spec.example(2)
        np.testing.assert_allclose(session(x), trt.logits(x), rtol=1e-5, atol=1e-5)
    cudart.cudaSetDevice(0)
    with load(plan, device="cuda:1") as session:
        assert trt.contexts[-1].device == 1
        assert cudart.current_device == 0  # opening an engine on GPU 1 leaves the caller on its own GPU
        np.testing.assert_allclose(session(x), trt.logits(x), rtol=1e-5, atol=1e-5)
        session.device_fn(x)()
        assert cudart.current_device == 0  # and so does every call
    assert cudart.current_device == 0
    with pytest.raises(MissingDependencyError, match="no CUDA device 2: 2 visible"):
        load(plan, device="cuda:2")


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_calls_from_another_thread_or_device_run_on_the_engine_s_device(two_gpus, cuda_graph):
    import threading

    plan, cudart, trt = two_gpus
    cudart.cudaSetDevice(1)
    session = load(plan, cuda_graph=cuda_graph)
    cudart.cudaSetDevice(0)  # the caller moved on to another GPU
    x = session.input_spec.example(3, seed=1)
    np.testing.assert_allclose(session(x), trt.logits(x), rtol=1e-5, atol=1e-5)
    results = {}
    worker = threading.Thread(target=lambda: results.update(out=session(x), run=session.device_fn(x)()))
    worker.start()  # a new thread starts on device 0
    worker.join()
    np.testing.assert_allclose(results["out"], trt.logits(x), rtol=1e-5, atol=1e-5)
    session.close()
    assert cudart.leaks() == 0
