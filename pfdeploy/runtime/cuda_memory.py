"""CUDA memory through cuda-python (`cuda.bindings.runtime`): pinned host and device buffers,
one stream, async copies, and CUDA-graph capture. No pycuda.

Every cuda-python runtime call returns a tuple `(cudaError_t, *results)`; `cuda_call` checks the
status and unwraps the results. `cudart()` and `cuda_call` are the one import and status check of
cuda-python in pfdeploy (the engine environment query uses them too). Handles (`cudaStream_t`,
`cudaGraph_t`, `cudaGraphExec_t`) are cuda-python objects; `int(handle)` is the raw value TensorRT
takes. Buffers are allocated once (for the largest shape they will hold) and freed by `free()` /
the owner's `close()`; a constructor that fails frees what it made before raising.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pfdeploy.errors import MissingDependencyError, PfdeployError

log = logging.getLogger(__name__)

#: TensorRT's (and cudaMalloc's) alignment of IO tensor addresses, in bytes.
ALIGNMENT = 256
CUDA_PYTHON_HINT = (
    "install cuda-python matching your CUDA major version: `pip install 'pfdeploy[tensorrt-cu12]'` "
    "(TensorRT + cuda-python 12.x, NVIDIA driver 525+) or `pfdeploy[tensorrt-cu13]` (driver 580+), "
    "or just `pip install 'cuda-python>=12.6.2.post1,<13'` (12.6.0 has no cuda.bindings)"
)
GPU_FIX = "check the GPU and driver (nvidia-smi) and that the engine fits in GPU memory"


def cudart():
    """The cuda-python runtime module `cuda.bindings.runtime` (cuda-python 12.6.2.post1 or newer: the
    first 12.x release with `cuda.bindings` that is not yanked)."""
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise MissingDependencyError(f"cuda-python is not installed ({exc}); {CUDA_PYTHON_HINT}") from None
    return runtime


def error_name(status: Any) -> str:
    """`cudaErrorMemoryAllocation` for a cudaError_t (its number for anything else)."""
    return getattr(status, "name", str(status))


def cuda_call(result: tuple, what: str = "CUDA call", *, fix: str = GPU_FIX,
              error: type[PfdeployError] = PfdeployError) -> Any:
    """Check the status of a cuda-python result tuple and return its value(s).

    `(status,)` -> None, `(status, x)` -> x, `(status, x, y)` -> (x, y). A non-zero status raises
    `error` (PfdeployError by default) naming the call, the error and `fix`.
    """
    if not isinstance(result, tuple) or not result:
        raise TypeError(f"{what}: expected a cuda-python result tuple, got {result!r}")
    status, *values = result
    if int(status) != 0:
        raise error(f"{what} failed with {error_name(status)} ({int(status)}); {fix}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def clear_last_error() -> None:
    """Reset the runtime's last error (cudaGetLastError) after a failure that was handled."""
    cudart().cudaGetLastError()


def current_device() -> int:
    """Index of the CUDA device current on this thread (cudaGetDevice)."""
    return int(cuda_call(cudart().cudaGetDevice(), "cudaGetDevice"))


def set_device(index: int) -> None:
    """Make device `index` current on this thread (cudaSetDevice): CUDA keeps one current device per
    host thread, and an engine's memory and kernels belong to the device it was loaded on."""
    cuda_call(cudart().cudaSetDevice(int(index)), f"cudaSetDevice({int(index)})")


@contextlib.contextmanager
def on_device(index: int) -> Iterator[None]:
    """Device `index` current on this thread inside the block and the caller's own device again after it (as
    `torch.cuda.device` does): work on an engine's GPU never moves its caller to another GPU."""
    previous = current_device()
    if previous != index:
        set_device(index)
    try:
        yield
    finally:
        if previous != index:
            set_device(previous)


def nbytes_of(shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes needed for an array of `shape` and `dtype` (dynamic -1 dims are an error)."""
    if any(int(d) < 0 for d in shape):
        raise PfdeployError(f"shape {tuple(shape)} has a dynamic dimension; allocate for the profile's max shape")
    return int(math.prod(int(d) for d in shape)) * np.dtype(dtype).itemsize


class Stream:
    """One CUDA stream (non-default) for all copies and execution of a session."""

    def __init__(self):
        self._rt = cudart()
        self.handle = cuda_call(self._rt.cudaStreamCreate(), "cudaStreamCreate")

    def synchronize(self) -> None:
        """Block until everything queued on the stream has finished."""
        cuda_call(self._rt.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def __int__(self) -> int:
        return int(self.handle)

    def free(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            cuda_call(self._rt.cudaStreamDestroy(handle), "cudaStreamDestroy")


class PinnedBuffer:
    """Page-locked host memory (cudaMallocHost) viewed as a NumPy array of `shape` and `dtype`."""

    def __init__(self, shape: tuple[int, ...], dtype: Any):
        self._rt = cudart()
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.nbytes = nbytes_of(self.shape, self.dtype)
        self.ptr = int(cuda_call(self._rt.cudaMallocHost(self.nbytes), "cudaMallocHost"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=self.dtype).reshape(self.shape)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.array = self.ptr, 0, None
            cuda_call(self._rt.cudaFreeHost(ptr), "cudaFreeHost")


class DeviceBuffer:
    """Device memory (cudaMalloc, 256-byte aligned) of `nbytes`; `ptr` is the address TensorRT binds."""

    def __init__(self, nbytes: int):
        self._rt = cudart()
        self.nbytes = int(nbytes)
        self.ptr = int(cuda_call(self._rt.cudaMalloc(self.nbytes), "cudaMalloc"))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda_call(self._rt.cudaFree(ptr), "cudaFree")


def copy_async(dst_ptr: int, src_ptr: int, nbytes: int, kind: str, stream: Stream) -> None:
    """cudaMemcpyAsync of `nbytes`; kind is "htod", "dtoh" or "dtod"."""
    rt = cudart()
    kinds = {
        "htod": rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
        "dtoh": rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        "dtod": rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
    }
    cuda_call(rt.cudaMemcpyAsync(dst_ptr, src_ptr, nbytes, kinds[kind], stream.handle), f"cudaMemcpyAsync {kind}")


class HostDeviceBuffer:
    """A pinned host buffer and a device buffer of the same max shape, copied on one stream."""

    def __init__(self, max_shape: tuple[int, ...], dtype: Any):
        self.host = PinnedBuffer(max_shape, dtype)
        try:
            self.device = DeviceBuffer(self.host.nbytes)
        except BaseException:
            self.host.free()
            raise

    def upload(self, array: np.ndarray, stream: Stream) -> None:
        """Copy `array` (a leading slice of the max shape) into pinned memory, then to the device."""
        view = self.host.array[: array.shape[0]]
        np.copyto(view, array, casting="no")
        copy_async(self.device.ptr, self.host.ptr, view.nbytes, "htod", stream)

    def download(self, shape: tuple[int, ...], stream: Stream) -> np.ndarray:
        """Queue the device->host copy of the leading `shape`; valid after stream.synchronize()."""
        view = self.host.array.reshape(-1)[: math.prod(shape)].reshape(shape)
        copy_async(self.host.ptr, self.device.ptr, view.nbytes, "dtoh", stream)
        return view

    def free(self) -> None:
        self.device.free()
        self.host.free()


class GraphCaptureError(PfdeployError):
    """A CUDA graph could not be captured or instantiated; the capture was ended and the error cleared,
    so the stream can run the same work without a graph."""


class CudaGraph:
    """Work captured from a stream once (cudaStreamBeginCapture/EndCapture), replayed by `launch`.

    `enqueue` queues the work on the stream; if the capture cannot begin, or `enqueue` returns False
    (TensorRT's execute_async_v3 does on failure), or the capture is invalidated, or the graph cannot be
    instantiated, the capture is ended, whatever was made is destroyed, the runtime's last error is
    cleared, and GraphCaptureError is raised: an empty or partial graph is never kept. An exception from
    `enqueue` propagates after the same clean-up.
    """

    def __init__(self, stream: Stream, enqueue: Callable[[], Any]):
        rt = cudart()
        self._rt, self._stream, self._exec = rt, stream, None
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        (status,) = rt.cudaStreamBeginCapture(stream.handle, mode)
        if int(status) != 0:  # nothing was begun: the stream runs the same work without a graph
            rt.cudaGetLastError()
            raise GraphCaptureError(f"CUDA graph capture failed: cudaStreamBeginCapture failed with "
                                    f"{error_name(status)}")
        try:
            ok = enqueue() is not False
        except BaseException:
            graph = self._end_capture()
            if graph is not None:
                rt.cudaGraphDestroy(graph)
            rt.cudaGetLastError()
            raise
        graph = self._end_capture()
        if graph is None:
            self._fail("the capture was invalidated (cudaStreamEndCapture failed)", None)
        if not ok:
            self._fail("the captured work reported that it could not be queued", graph)
        status, handle = rt.cudaGraphInstantiateWithFlags(graph, 0)
        if int(status) != 0 or handle is None:
            self._fail(f"cudaGraphInstantiateWithFlags failed with {error_name(status)}", graph)
        rt.cudaGraphDestroy(graph)  # the executable graph keeps what it needs
        self._exec = handle

    def _end_capture(self):
        """End the capture; the graph, or None (error cleared) if the capture was invalidated."""
        status, graph = self._rt.cudaStreamEndCapture(self._stream.handle)
        if int(status) != 0 or graph is None or int(graph) == 0:
            log.debug("cudaStreamEndCapture: %s", error_name(status))
            self._rt.cudaGetLastError()
            return None
        return graph

    def _fail(self, reason: str, graph) -> None:
        if graph is not None:
            self._rt.cudaGraphDestroy(graph)
        self._rt.cudaGetLastError()  # clear the error the failed capture left behind
        raise GraphCaptureError(f"CUDA graph capture failed: {reason}")

    def launch(self) -> None:
        """Queue one replay of the captured work on the stream."""
        cuda_call(self._rt.cudaGraphLaunch(self._exec, self._stream.handle), "cudaGraphLaunch")

    def free(self) -> None:
        if self._exec is not None:
            handle, self._exec = self._exec, None
            cuda_call(self._rt.cudaGraphExecDestroy(handle), "cudaGraphExecDestroy")
