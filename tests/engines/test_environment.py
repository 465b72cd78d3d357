"""Environment facts: the pure parts here; the real query needs TensorRT and a GPU (marked)."""

from __future__ import annotations

import importlib.util

import pytest

from pfdeploy.engines.environment import current_environment, format_cuda_version
from pfdeploy.errors import MissingDependencyError


@pytest.mark.parametrize("value, text", [(12040, "12.4"), (11080, "11.8"), (13000, "13.0"), (12090, "12.9")])
def test_format_cuda_version(value, text):
    assert format_cuda_version(value) == text


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_current_environment_without_tensorrt_names_the_install():
    with pytest.raises(MissingDependencyError) as exc:
        current_environment()
    assert exc.value.exit_code == 2
    assert "pip install 'pfdeploy[tensorrt]'" in str(exc.value)


@pytest.mark.tensorrt
def test_current_environment_on_a_gpu():
    env = current_environment()
    assert env["tensorrt_version"].split(".")[0] in {"10", "11"}
    major, minor = env["compute_capability"].split(".")
    assert int(major) >= 7 and minor.isdigit()
    assert env["gpu_name"] and env["cuda_runtime_version"].count(".") == 1


def test_gpu_query_without_a_gpu_is_a_missing_dependency():
    """The real cuda-python call (no GPU here: it returns an error code) becomes one clear line."""
    pytest.importorskip("cuda.bindings", reason="needs cuda-python (a dev dependency)")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from pfdeploy.engines.environment import gpu_facts

    with pytest.raises(MissingDependencyError, match="cudaGetDeviceCount failed with cudaError.*no usable CUDA GPU"):
        gpu_facts()


def test_the_environment_describes_the_current_device_not_device_0(monkeypatch):
    """On a machine with two GPUs, TensorRT builds and loads on the thread's current device: that is the
    device the manifest and the loadability check must describe (tests/runtime/sim_gpu.py's runtime)."""
    from pathlib import Path
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "runtime"))
    from sim_gpu import SimCudart

    import pfdeploy.engines.environment as environment
    from pfdeploy.runtime import cuda_memory

    sim = SimCudart(device=1, device_count=2)
    sim.device_names = ["NVIDIA H100", "NVIDIA A100"]
    sim.compute_capabilities = [(9, 0), (8, 0)]
    monkeypatch.setattr(cuda_memory, "cudart", lambda: sim)
    monkeypatch.setattr(environment, "require_tensorrt", lambda: SimpleNamespace(__version__="10.9.0"))
    env = environment.current_environment()
    assert (env["gpu_index"], env["gpu_name"], env["compute_capability"]) == (1, "NVIDIA A100", "8.0")
    assert environment.current_environment(0)["gpu_name"] == "NVIDIA H100"  # asked for explicitly
