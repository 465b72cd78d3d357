"""Host-memory simulators of the cuda-python runtime and of a TensorRT engine, for CPU-only tests.

They implement only the calls pfdeploy makes, with the documented return conventions (a tuple
`(cudaError_t, *values)` from every runtime call; TensorRT's tensor-name API), so the buffer,
copy, stream, capture and binding logic of pfdeploy.runtime.cuda_memory / tensorrt_backend runs
here. "Device" memory is host memory; work queued on a stream runs when queued, or is recorded
while the stream is being captured and replayed on cudaGraphLaunch. They are test doubles of the
dependencies, not of the code under test; the real thing is exercised by the `gpu`/`tensorrt` tests.
"""

from __future__ import annotations

import ctypes
import enum
import math

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorStreamCaptureUnsupported = 900


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1


OK = cudaError_t.cudaSuccess


class SimCudart:
    """The subset of `cuda.bindings.runtime` pfdeploy uses, on host memory."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode

    def __init__(self):
        self.host, self.device = {}, {}  # ptr -> ctypes buffer (kept alive here)
        self.streams, self.capturing, self.graphs, self.execs = set(), {}, {}, {}
        self.calls: list[str] = []
        self._next = 1

    def _new(self) -> int:
        self._next += 1
        return self._next

    def _alloc(self, table: dict, nbytes: int, name: str):
        self.calls.append(name)
        buf = ctypes.create_string_buffer(int(nbytes))
        table[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)

    def cudaMallocHost(self, nbytes):  # noqa: N802
        return self._alloc(self.host, nbytes, "cudaMallocHost")

    def cudaMalloc(self, nbytes):  # noqa: N802
        return self._alloc(self.device, nbytes, "cudaMalloc")

    def cudaFreeHost(self, ptr):  # noqa: N802
        return (OK,) if self.host.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def cudaFree(self, ptr):  # noqa: N802
        return (OK,) if self.device.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamCreate(self):  # noqa: N802
        handle = self._new()
        self.streams.add(handle)
        return OK, handle

    def cudaStreamDestroy(self, stream):  # noqa: N802
        if int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.streams.remove(int(stream))
        return (OK,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        if int(stream) in self.capturing:
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return (OK,)

    def enqueue(self, stream, work) -> None:
        """Run `work` now, or record it if `stream` is being captured."""
        if int(stream) in self.capturing:
            self.capturing[int(stream)].append(work)
        else:
            work()

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        if int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.calls.append(f"memcpy {kind.name}")
        self.enqueue(stream, lambda: ctypes.memmove(int(dst), int(src), int(nbytes)))
        return (OK,)

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        self.calls.append("capture")
        self.capturing[int(stream)] = []
        return (OK,)

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        graph = self._new()
        self.graphs[graph] = self.capturing.pop(int(stream))
        return OK, graph

    def cudaGraphInstantiateWithFlags(self, graph, flags):  # noqa: N802
        handle = self._new()
        self.execs[handle] = list(self.graphs[graph])
        return OK, handle

    def cudaGraphDestroy(self, graph):  # noqa: N802
        return (OK,) if self.graphs.pop(graph, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def cudaGraphExecDestroy(self, handle):  # noqa: N802
        return (OK,) if self.execs.pop(handle, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def cudaGraphLaunch(self, handle, stream):  # noqa: N802
        self.calls.append("graph launch")
        for work in self.execs[handle]:
            self.enqueue(stream, work)
        return (OK,)

    def leaks(self) -> int:
        """Allocations, streams and graph executables not yet freed."""
        return len(self.host) + len(self.device) + len(self.streams) + len(self.execs)


def read(ptr: int, shape, dtype) -> np.ndarray:
    """Copy of the array at address `ptr`."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return np.frombuffer(ctypes.string_at(ptr, nbytes), dtype=dtype).reshape(shape).copy()


def write(ptr: int, array: np.ndarray) -> None:
    data = np.ascontiguousarray(array).tobytes()
    ctypes.memmove(ptr, data, len(data))


class SimTensorRT:
    """A `tensorrt` module whose engine computes logits = flatten(x) @ weight on the stream."""

    class TensorIOMode(enum.Enum):
        INPUT = 0
        OUTPUT = 1

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    def __init__(self, cudart: SimCudart, image_shape=(3, 8, 8), classes: int = 5, max_batch: int = 8):
        self.cudart, self.image_shape, self.max_batch = cudart, tuple(image_shape), max_batch
        self.weight = np.random.default_rng(0).standard_normal((math.prod(image_shape), classes)).astype(np.float32)
        self.executions = 0
        sim = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data: bytes):
                return SimEngine(sim) if data.startswith(b"SIMPLAN") else None

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype):
        return dtype


class SimEngine:
    def __init__(self, sim: SimTensorRT):
        self.sim, self.num_io_tensors = sim, 2

    def get_tensor_name(self, index: int) -> str:
        return ("input", "logits")[index]

    def get_tensor_mode(self, name: str):
        return self.sim.TensorIOMode.INPUT if name == "input" else self.sim.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        return np.float32

    def get_tensor_profile_shape(self, name: str, profile: int):
        shape = self.sim.image_shape
        return [(1, *shape), (self.sim.max_batch, *shape), (self.sim.max_batch, *shape)]

    def create_execution_context(self):
        return SimContext(self.sim)


class SimContext:
    def __init__(self, sim: SimTensorRT):
        self.sim, self.shape, self.addresses = sim, None, {}

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        if shape[1:] != self.sim.image_shape or not 1 <= shape[0] <= self.sim.max_batch:
            return False
        self.shape = shape
        return True

    def get_tensor_shape(self, name: str):
        return self.shape if name == "input" else (self.shape[0], self.sim.weight.shape[1])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle) -> bool:
        shape, src, dst = self.shape, self.addresses["input"], self.addresses["logits"]

        def work():  # reads the bound memory when it runs, as a kernel would
            self.sim.executions += 1
            x = read(src, shape, np.float32).reshape(shape[0], -1)
            write(dst, x @ self.sim.weight)

        self.sim.cudart.enqueue(stream_handle, work)
        return True
