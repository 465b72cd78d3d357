"""cuda-python memory layer: result checking here; real buffers, copies and graphs on a GPU."""

from __future__ import annotations

import enum
import importlib.util

import numpy as np
import pytest

from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.runtime import cuda_memory
from pfdeploy.runtime.cuda_memory import cuda_call, nbytes_of

HAS_CUDA_PYTHON = importlib.util.find_spec("cuda") is not None


class FakeError(enum.IntEnum):  # the shape of cuda-python's cudaError_t
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


def test_cuda_call_unwraps_results():
    assert cuda_call((FakeError.cudaSuccess,)) is None
    assert cuda_call((FakeError.cudaSuccess, 1234)) == 1234
    assert cuda_call((0, "a", "b")) == ("a", "b")


def test_cuda_call_raises_naming_the_call_and_error():
    with pytest.raises(PfdeployError, match="cudaMalloc failed with cudaErrorMemoryAllocation"):
        cuda_call((FakeError.cudaErrorMemoryAllocation, 0), "cudaMalloc")
    with pytest.raises(TypeError):
        cuda_call(None)


def test_nbytes_of():
    assert nbytes_of((32, 3, 224, 224), np.float16) == 32 * 3 * 224 * 224 * 2
    assert nbytes_of((8, 1000), "float32") == 32000
    with pytest.raises(PfdeployError, match="dynamic"):
        nbytes_of((-1, 3, 224, 224), np.float32)


@pytest.mark.skipif(HAS_CUDA_PYTHON, reason="cuda-python is installed here")
def test_missing_cuda_python_is_a_clear_error():
    with pytest.raises(MissingDependencyError, match="pip install cuda-python"):
        cuda_memory.cudart()


@pytest.mark.gpu
def test_pinned_round_trip_and_graph_replay():
    pytest.importorskip("cuda.bindings", reason="needs cuda-python (cuda.bindings) on the GPU machine")
    from pfdeploy.runtime.cuda_memory import CudaGraph, DeviceBuffer, HostDeviceBuffer, Stream, copy_async

    stream = Stream()
    src = HostDeviceBuffer((4, 3, 8, 8), np.float32)
    dst = HostDeviceBuffer((4, 3, 8, 8), np.float32)
    extra = DeviceBuffer(src.device.nbytes)
    try:
        x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
        src.upload(x, stream)
        copy_async(dst.device.ptr, src.device.ptr, x.nbytes, "dtod", stream)
        out = dst.download(x.shape, stream)
        stream.synchronize()
        np.testing.assert_array_equal(out, x)
        # a captured device-to-device copy replays on new data
        graph = CudaGraph(stream, lambda: copy_async(extra.ptr, src.device.ptr, x.nbytes, "dtod", stream))
        y = x + 1
        src.upload(y, stream)
        graph.launch()
        copy_async(dst.device.ptr, extra.ptr, y.nbytes, "dtod", stream)
        out = dst.download(y.shape, stream)
        stream.synchronize()
        np.testing.assert_array_equal(out, y)
        graph.free()
    finally:
        for resource in (src, dst, extra, stream):
            resource.free()


@pytest.fixture
def sim(monkeypatch):
    from sim_gpu import SimCudart

    fake = SimCudart()
    monkeypatch.setattr(cuda_memory, "cudart", lambda: fake)
    return fake


def test_buffers_copies_and_graph_on_the_simulated_runtime(sim):
    from pfdeploy.runtime.cuda_memory import CudaGraph, HostDeviceBuffer, Stream, copy_async

    stream = Stream()
    a = HostDeviceBuffer((4, 2, 3), np.float32)
    b = HostDeviceBuffer((4, 2, 3), np.float32)
    assert a.host.array.shape == (4, 2, 3) and a.device.nbytes == 96
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    a.upload(x, stream)  # only the leading 2 of 4 rows travel
    assert sim.calls[-1] == "memcpy cudaMemcpyHostToDevice"
    copy_async(b.device.ptr, a.device.ptr, x.nbytes, "dtod", stream)
    out = b.download((2, 2, 3), stream)
    stream.synchronize()
    np.testing.assert_array_equal(out, x)
    graph = CudaGraph(stream, lambda: copy_async(b.device.ptr, a.device.ptr, x.nbytes, "dtod", stream))
    a.upload(x * 10, stream)
    graph.launch()
    np.testing.assert_array_equal(b.download((2, 2, 3), stream), x * 10)
    with pytest.raises(PfdeployError, match="cudaFree failed"):
        cuda_memory.DeviceBuffer.free(type("Gone", (), {"ptr": 12345, "_rt": sim})())
    for resource in (graph, a, b, stream):
        resource.free()
    graph.free()  # idempotent
    assert sim.leaks() == 0
