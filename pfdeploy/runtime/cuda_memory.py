"""CUDA memory through cuda-python (`cuda.bindings.runtime`): pinned host and device buffers,
one stream, async copies, and CUDA-graph capture. No pycuda.

Every cuda-python runtime call returns a tuple `(cudaError_t, *results)`; `cuda_call` checks the
status and unwraps the results. Buffers are allocated once (for the largest shape they will hold)
and freed by `free()` / the owner's `close()`.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pfdeploy.errors import MissingDependencyError, PfdeployError


def cudart():
    """The cuda-python runtime module (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise MissingDependencyError(
                "the CUDA memory layer needs cuda-python; install it with `pip install cuda-python` "
                "(or pfdeploy[tensorrt]) on a GPU machine"
            ) from None
    return runtime


def cuda_call(result: tuple, what: str = "CUDA call") -> Any:
    """Check the status of a cuda-python result tuple and return its value(s).

    `(status,)` -> None, `(status, x)` -> x, `(status, x, y)` -> (x, y). A non-zero status
    raises a PfdeployError naming the call and the error.
    """
    if not isinstance(result, tuple) or not result:
        raise TypeError(f"{what}: expected a cuda-python result tuple, got {result!r}")
    status, *values = result
    if int(status) != 0:
        name = getattr(status, "name", str(status))
        raise PfdeployError(f"{what} failed with {name} ({int(status)}); check the GPU and driver "
                            "(nvidia-smi) and that the engine fits in GPU memory")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


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
            cuda_call(self._rt.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


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
            self.array = None
            cuda_call(self._rt.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class DeviceBuffer:
    """Device memory (cudaMalloc) of `nbytes`; `ptr` is the address TensorRT binds."""

    def __init__(self, nbytes: int):
        self._rt = cudart()
        self.nbytes = int(nbytes)
        self.ptr = int(cuda_call(self._rt.cudaMalloc(self.nbytes), "cudaMalloc"))

    def free(self) -> None:
        if self.ptr:
            cuda_call(self._rt.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


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
        self.device = DeviceBuffer(self.host.nbytes)

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


class CudaGraph:
    """Work captured from a stream once (cudaStreamBeginCapture/EndCapture), replayed by `launch`."""

    def __init__(self, stream: Stream, enqueue: Callable[[], None]):
        rt = cudart()
        self._rt, self._stream = rt, stream
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_call(rt.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = cuda_call(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        try:
            self._exec = cuda_call(rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
        finally:
            cuda_call(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self) -> None:
        """Queue one replay of the captured work on the stream."""
        cuda_call(self._rt.cudaGraphLaunch(self._exec, self._stream.handle), "cudaGraphLaunch")

    def free(self) -> None:
        if self._exec is not None:
            cuda_call(self._rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            self._exec = None
