"""cuda-python memory layer: result checking here; real buffers, copies and graphs on a GPU."""

from __future__ import annotations

import enum
import sys

import numpy as np
import pytest

from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.runtime import cuda_memory
from pfdeploy.runtime.cuda_memory import cuda_call, nbytes_of


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


def test_missing_cuda_python_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # as if cuda-python were not installed
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    with pytest.raises(MissingDependencyError, match="cuda-python") as exc:
        cuda_memory.cudart()
    assert "tensorrt-cu12" in str(exc.value)


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


def test_stream_handle_is_the_runtime_s_object(sim):
    from sim_gpu import cudaStream_t

    from pfdeploy.runtime.cuda_memory import Stream

    stream = Stream()
    assert isinstance(stream.handle, cudaStream_t) and not isinstance(stream.handle, int)
    assert int(stream) == int(stream.handle) != 0
    stream.free()
    assert sim.leaks() == 0


def test_allocations_are_256_byte_aligned(sim):
    from pfdeploy.runtime.cuda_memory import HostDeviceBuffer

    buffers = [HostDeviceBuffer((n, 3), np.float32) for n in (1, 5, 7)]
    assert all(b.host.ptr % 256 == 0 and b.device.ptr % 256 == 0 for b in buffers)
    for b in buffers:
        b.free()


def test_failed_device_allocation_frees_the_pinned_buffer(sim):
    from pfdeploy.runtime.cuda_memory import HostDeviceBuffer

    sim.fail_alloc_at = 2  # cudaMallocHost succeeds, cudaMalloc fails
    with pytest.raises(PfdeployError, match="cudaMalloc failed with cudaErrorMemoryAllocation"):
        HostDeviceBuffer((4, 3), np.float32)
    assert sim.leaks() == 0


def _capture_failures(sim, stream, buf):
    """Work that fails during capture in the three ways the runtime reports it."""
    from pfdeploy.runtime.cuda_memory import copy_async

    def returns_false():  # an enqueue that reports failure (TensorRT's execute_async_v3 -> False)
        return False

    def invalidates():  # an operation illegal in capture: cudaStreamEndCapture then fails
        copy_async(buf.device.ptr, buf.device.ptr, 16, "dtod", stream)
        sim.cudaStreamSynchronize(stream.handle)

    def raises():
        copy_async(buf.device.ptr, buf.device.ptr, 16, "dtod", stream)
        raise KeyboardInterrupt

    return {"returns False": returns_false, "invalidates": invalidates, "raises": raises}


@pytest.mark.parametrize("how", ["returns False", "invalidates", "raises"])
def test_failed_capture_ends_the_capture_clears_the_error_and_leaks_nothing(sim, how):
    from pfdeploy.runtime.cuda_memory import CudaGraph, GraphCaptureError, HostDeviceBuffer, Stream

    stream = Stream()
    buf = HostDeviceBuffer((4, 4), np.float32)
    work = _capture_failures(sim, stream, buf)[how]
    with pytest.raises(KeyboardInterrupt if how == "raises" else GraphCaptureError):
        CudaGraph(stream, work)
    assert not sim.capturing and int(sim.cudaPeekAtLastError()[0]) == 0  # capture ended, error cleared
    assert not sim.graphs and not sim.execs  # nothing half-made kept
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    buf.upload(x, stream)  # the stream works normally afterwards
    out = buf.download(x.shape, stream)
    stream.synchronize()
    np.testing.assert_array_equal(out, x)
    for resource in (buf, stream):
        resource.free()
    assert sim.leaks() == 0


@pytest.mark.gpu
def test_real_capture_failure_is_recovered_on_the_gpu():
    pytest.importorskip("cuda.bindings", reason="needs cuda-python (cuda.bindings) on the GPU machine")
    from pfdeploy.runtime.cuda_memory import CudaGraph, GraphCaptureError, HostDeviceBuffer, Stream, cudart

    rt = cudart()
    stream = Stream()
    buf = HostDeviceBuffer((4, 64), np.float32)
    try:
        assert buf.device.ptr % 256 == 0 and buf.host.ptr % 256 == 0  # what TensorRT needs
        with pytest.raises(GraphCaptureError):
            CudaGraph(stream, lambda: rt.cudaStreamSynchronize(stream.handle))  # illegal in capture
        assert int(rt.cudaPeekAtLastError()[0]) == 0
        x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
        buf.upload(x, stream)
        out = buf.download(x.shape, stream)
        stream.synchronize()
        np.testing.assert_array_equal(out, x)
    finally:
        buf.free()
        stream.free()


def test_a_capture_that_cannot_begin_is_a_graph_capture_error(sim):
    """cudaStreamBeginCapture failing (here: the stream is already being captured) raises the error class
    callers fall back on (GraphCaptureError), with the runtime's error cleared; the other capture goes on."""
    from pfdeploy.runtime.cuda_memory import CudaGraph, GraphCaptureError, Stream

    stream = Stream()
    assert int(sim.cudaStreamBeginCapture(stream.handle, sim.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)[0]) == 0
    with pytest.raises(GraphCaptureError, match="cudaStreamBeginCapture"):
        CudaGraph(stream, lambda: None)
    assert int(sim.cudaPeekAtLastError()[0]) == 0 and stream.handle is not None
    status, graph = sim.cudaStreamEndCapture(stream.handle)  # the first capture was left alone
    assert int(status) == 0
    sim.cudaGraphDestroy(graph)
    stream.free()
    assert sim.leaks() == 0


def test_every_cuda_python_pin_has_cuda_bindings():
    """cuda-python 12.6.0 has no `cuda.bindings` (12.6.1 and 12.6.2 are yanked; 12.6.2.post1 is the first
    12.x release with it): no CUDA 12 extra may admit it, and the install hint says the same."""
    from pathlib import Path

    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    pins = {extra: Requirement(r).specifier for extra, reqs in project["optional-dependencies"].items()
            for r in reqs if Requirement(r).name == "cuda-python"}
    assert {"tensorrt-cu12", "cuda", "dev", "tensorrt-cu13"} <= set(pins)
    for extra in ("tensorrt-cu12", "cuda", "dev"):
        spec = pins[extra]
        assert not spec.contains("12.6.0") and not spec.contains("12.5.0"), extra
        assert spec.contains("12.6.2.post1") and spec.contains("12.9.10") and not spec.contains("13.0.0"), extra
    assert not pins["tensorrt-cu13"].contains("12.9.10") and pins["tensorrt-cu13"].contains("13.0.0")
    assert "12.6.2.post1" in cuda_memory.CUDA_PYTHON_HINT
