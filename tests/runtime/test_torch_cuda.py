"""Torch CUDA backend and device-only benchmark figures (GPU machines only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pfdeploy.errors import MissingDependencyError
from pfdeploy.runtime import load
from pfdeploy.runtime.bench import benchmark


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(MissingDependencyError, match="needs a CUDA GPU"):
        load("r50", device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("options,tol", [
    ({}, 1e-3),
    ({"channels_last": True}, 1e-3),
    ({"cuda_graph": True}, 1e-3),
    ({"precision": "fp16", "channels_last": True}, 3e-2),
    ({"precision": "fp16", "cuda_graph": True}, 3e-2),
])
def test_cuda_matches_cpu(cheap_onnx, options, tol):
    path = cheap_onnx("r50_hybrid")
    with load(path, backend="torch") as cpu, load(path, backend="torch", device="cuda", **options) as gpu:
        assert gpu.device.startswith("cuda") and not gpu.thread_safe
        for batch in (1, 4, 4, 2):
            x = cpu.input_spec.example(batch, seed=batch)
            ref = cpu(x)
            scale = max(1.0, float(np.abs(ref).max()))
            np.testing.assert_allclose(gpu(x), ref, atol=tol * scale, rtol=0)
        t = torch.from_numpy(x).cuda()
        np.testing.assert_allclose(gpu(t), gpu(x), atol=tol * scale, rtol=0)  # zero-copy CUDA input


@pytest.mark.gpu
def test_uint8_input_on_cuda(cheap_onnx):
    path = cheap_onnx("vit_ti_max", input_format="uint8-nhwc")
    with load(path) as ort, load(path, backend="torch", device="cuda") as gpu:
        x = ort.input_spec.example(3)
        np.testing.assert_allclose(gpu(x), ort(x), atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
def test_bench_reports_device_only_figures_on_gpu(cheap_onnx):
    with load(cheap_onnx("r50_hybrid"), backend="torch", device="cuda") as gpu:
        report = benchmark([("gpu", gpu)], batches=(1, 4), seconds=0.1, warmup=3)
    modes = {(r["batch"], r["mode"]) for r in report["results"]}
    assert modes == {(1, "end_to_end"), (1, "device"), (4, "end_to_end"), (4, "device")}
    assert report["environment"]["gpu"]
    by = {(r["batch"], r["mode"]): r["images_per_second"] for r in report["results"]}
    assert by[(4, "device")] > 0 and by[(4, "end_to_end")] > 0
