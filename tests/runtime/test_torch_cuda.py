"""Torch CUDA backend and device-only benchmark figures (GPU machines only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_helpers import assert_close

from pfdeploy.errors import MissingDependencyError
from pfdeploy.runtime import load
from pfdeploy.runtime.bench import benchmark


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(MissingDependencyError, match="needs a CUDA GPU"):
        load("r50", device="cuda")


def test_tf32_mode_sets_and_restores_both_flags():
    from pfdeploy.runtime.torch_backend import tf32_mode

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, True
        with tf32_mode(False):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
        cudnn.allow_tf32, matmul.allow_tf32 = False, False
        with pytest.raises(RuntimeError), tf32_mode(True):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
            raise RuntimeError
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_load_takes_tf32_for_the_torch_backend(cheap_onnx, cheap_checkpoint):
    # the H200 run of `make gpu-check` found `load(..., tf32=True)` refused as an unknown option
    with load(cheap_onnx("r50_hybrid"), backend="torch", checkpoint=cheap_checkpoint("r50_hybrid"),
              tf32=True) as session:
        assert session(session.input_spec.example(1)).shape[0] == 1


# FP32 on CUDA is FP32 (TF32 off in the session): within verify's fp32 tolerance of the CPU.
@pytest.mark.gpu
@pytest.mark.parametrize("options,tol", [
    ({}, 1e-4),
    ({"channels_last": True}, 1e-4),
    ({"cuda_graph": True}, 1e-4),
    ({"tf32": True}, 3e-2),  # TF32 keeps FP16's 10-bit mantissa: FP16's tolerance
    ({"precision": "fp16", "channels_last": True}, 3e-2),
    ({"precision": "fp16", "cuda_graph": True}, 3e-2),
])
def test_cuda_matches_cpu(cheap_onnx, cheap_checkpoint, options, tol):
    path, ckpt = cheap_onnx("r50_hybrid"), cheap_checkpoint("r50_hybrid")
    with load(path, backend="torch", checkpoint=ckpt) as cpu, \
            load(path, backend="torch", device="cuda", checkpoint=ckpt, **options) as gpu:
        assert gpu.device.startswith("cuda") and not gpu.thread_safe
        for batch in (1, 4, 4, 2):
            x = cpu.input_spec.example(batch, seed=batch)
            ref = cpu(x)
            assert np.ptp(ref) > 0.05  # distinct logits: the tolerance is relative to their range
            assert_close(ref, gpu(x), rel=tol)
        t = torch.from_numpy(x).cuda()
        assert_close(gpu(x), gpu(t), rel=tol)  # zero-copy CUDA input


@pytest.mark.gpu
def test_uint8_input_on_cuda(cheap_onnx, cheap_checkpoint):
    path, ckpt = cheap_onnx("vit_ti_max", input_format="uint8-nhwc"), cheap_checkpoint("vit_ti_max")
    with load(path) as ort, load(path, backend="torch", device="cuda", checkpoint=ckpt) as gpu:
        x = ort.input_spec.example(3)
        assert_close(ort(x), gpu(x), rel=1e-3)


@pytest.mark.gpu
def test_bench_reports_device_only_figures_on_gpu(cheap_onnx, cheap_checkpoint):
    ckpt = cheap_checkpoint("r50_hybrid")
    with load(cheap_onnx("r50_hybrid"), backend="torch", device="cuda", checkpoint=ckpt) as gpu:
        report = benchmark([("gpu", gpu)], batches=(1, 4), seconds=0.1, warmup=3)
    modes = {(r["batch"], r["mode"]) for r in report["results"]}
    assert modes == {(1, "end_to_end"), (1, "device"), (4, "end_to_end"), (4, "device")}
    assert report["environment"]["gpu"]
    by = {(r["batch"], r["mode"]): r["images_per_second"] for r in report["results"]}
    assert by[(4, "device")] > 0 and by[(4, "end_to_end")] > 0


@pytest.mark.gpu
def test_device_fn_waits_for_the_session_lock(cheap_onnx, cheap_checkpoint):
    import threading

    path, ckpt = cheap_onnx("r50_hybrid"), cheap_checkpoint("r50_hybrid")
    with load(path, backend="torch", device="cuda", cuda_graph=True, checkpoint=ckpt) as gpu:
        run = gpu.device_fn(gpu.input_spec.example(2))
        done = threading.Event()
        worker = threading.Thread(target=lambda: (run(), done.set()))
        with gpu._lock:  # another call holds the session (its graphs and staging buffer)
            worker.start()
            assert not done.wait(0.5)
        worker.join(60)
        assert done.is_set()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (captures on the second)")
def test_cuda_graph_is_captured_on_the_session_device(cheap_onnx, cheap_checkpoint):
    path, ckpt = cheap_onnx("r50_hybrid"), cheap_checkpoint("r50_hybrid")
    last = torch.cuda.device_count() - 1
    torch.cuda.set_device(0)
    with load(path, backend="torch", checkpoint=ckpt) as cpu, \
            load(path, backend="torch", device=f"cuda:{last}", cuda_graph=True, checkpoint=ckpt) as gpu:
        for batch in (2, 2, 3):
            x = cpu.input_spec.example(batch, seed=batch)
            assert_close(cpu(x), gpu(x), rel=1e-3)
        assert torch.cuda.current_device() == 0  # the caller's current device is left alone


# --- issue 18: folded, compiled and fused paths on CUDA, each verified like an artifact ----------------


@pytest.mark.gpu
def test_cnns_default_to_channels_last_and_folded_on_cuda(cheap_onnx, cheap_checkpoint):
    path, ckpt = cheap_onnx("r50_hybrid"), cheap_checkpoint("r50_hybrid")
    with load(path, backend="torch", device="cuda", checkpoint=ckpt) as gpu:
        plan = gpu.describe()["plan"]
        assert plan["channels_last"] and plan["fold_bn"] and not plan["fused"]
        weight = gpu._model.conv1[0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,options", [
    ("fp16", {"compile": "reduce-overhead"}),  # Inductor with its own CUDA graphs
    ("fp32", {"compile": "default", "cuda_graph": True}),  # Inductor inside the session's CUDA graph
])
def test_compiled_sessions_pass_verify_on_cuda(cheap_onnx, cheap_checkpoint, precision, options):
    from pfdeploy.runtime.verify import verify_artifact

    path, ckpt = cheap_onnx("r50_hybrid"), cheap_checkpoint("r50_hybrid")
    report = verify_artifact(path, checkpoint=ckpt, backend="torch", device="cuda", precision=precision,
                             options=options, samples=10, batch=5)  # top-1 >= 0.9 allows one flip in 10
    assert report.passed, report.format()
    assert report.precision == precision


@pytest.mark.gpu
def test_fused_compiled_session_passes_the_fp16_row(cheap_onnx, cheap_checkpoint):
    from pfdeploy.kernels import triton_problem
    from pfdeploy.runtime.verify import verify_artifact

    if triton_problem():
        pytest.skip(triton_problem())
    path, ckpt = cheap_onnx("r50_max"), cheap_checkpoint("r50_max")
    with load(path, backend="torch", device="cuda", checkpoint=ckpt, fused=True) as fused, \
            load(path, backend="torch", checkpoint=ckpt) as cpu:
        assert fused.describe()["plan"]["fused"]
        x = cpu.input_spec.example(2)
        assert_close(cpu(x), fused(x), rel=1e-3)  # FP32, eager, the kernel's dots in IEEE FP32
    report = verify_artifact(path, checkpoint=ckpt, backend="torch", device="cuda", precision="fp16",
                             options={"fused": True, "compile": "reduce-overhead"}, samples=10, batch=5)
    assert report.passed, report.format()


@pytest.mark.gpu
def test_fused_fp16_pt2_package_on_cuda(tmp_path, cheap_checkpoint, cheap):
    from pfdeploy.errors import PfdeployError
    from pfdeploy.export.pt2 import pt2_from_model, read_pt2_metadata
    from pfdeploy.kernels import triton_problem
    from pfdeploy.runtime.verify import verify_artifact

    if triton_problem():
        pytest.skip(triton_problem())
    ckpt = cheap_checkpoint("r50_max")
    path = pt2_from_model("r50_max", tmp_path / "m.pt2", checkpoint=ckpt, num_classes=10, overrides=cheap("r50_max"),
                          precision="fp16", batch=5, device="cuda", fused=True, max_autotune=False)
    meta = read_pt2_metadata(path)
    assert (meta["pfdeploy.device"], meta["pfdeploy.fused_layers"], meta["AOTI_DEVICE_KEY"]) == ("cuda", "1", "cuda")
    report = verify_artifact(path, checkpoint=ckpt, samples=10)
    assert report.passed and report.backend == "pt2" and report.precision == "fp16", report.format()
    with load(path, cuda_graph=True) as session:
        assert session.device.startswith("cuda")
        x = session.input_spec.example(5)
        assert_close(session(x), session(torch.from_numpy(x).cuda()), rel=1e-3)
        with pytest.raises(PfdeployError, match="batch range 5..5"):
            session(session.input_spec.example(3))
