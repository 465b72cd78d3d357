"""TensorRT backend: a serialized engine run with cuda-python memory (no pycuda).

Before deserializing, the `<plan>.json` manifest is read and checked against this machine
(TensorRT version, GPU compute capability) and the plan's sha256, so a mismatched engine is refused
with a clear message instead of a TensorRT crash. Pinned host and device buffers are allocated once
for the optimization profile's max batch; each call copies in, sets the input shape, runs
`execute_async_v3` on one stream and copies out; every TensorRT call that reports failure by its
result (deserialize, set_input_shape, set_tensor_address, execute_async_v3) is checked. With
`cuda_graph=True` the execution of each batch size is captured once as a CUDA graph and replayed; a
capture that fails (or cannot begin) is cleaned up and that batch size runs with plain enqueue. Each
captured batch size gets an execution context of its own, used for nothing else, as trtexec captures one
shape per context: no NVIDIA text promises that a graph captured on a context stays valid after that
context ran another shape. Each such context holds its own activation memory, so at most
MAX_GRAPH_SHAPES batch sizes are captured; others run with plain enqueue. A CUDA tensor is bound in
place only when it is on the engine's GPU and 256-byte aligned, else copied into the session's buffer.

Devices: the engine is checked against, and deserialized on, the device it will run on (`device="cuda"`:
the thread's current device; `"cuda:N"`: device N), and every call makes that device current first (CUDA
keeps one current device per host thread, so a call from another thread would otherwise run elsewhere).
IExecutionContext is not thread-safe: calls are serialized by a lock (open one session per thread for
concurrency).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pfdeploy.errors import PfdeployError
from pfdeploy.runtime.session import Session, spec_for_format

log = logging.getLogger(__name__)

# Input dtypes an engine of each input format may take (recorded in the manifest's `io` section).
IO_DTYPES = {"float-nchw": ("float32", "float16"), "uint8-nhwc": ("uint8",)}
#: Batch sizes captured as CUDA graphs per session (each holds an execution context and its activation memory).
MAX_GRAPH_SHAPES = 8


def device_index_of(device: str) -> int | None:
    """"cuda" -> None (the current device), "cuda:N" -> N; anything else is refused in one line."""
    if device == "cuda":
        return None
    kind, _, index = device.partition(":")
    if kind == "cuda" and index.isdigit():
        return int(index)
    raise PfdeployError(f"TensorRT engines run on device='cuda' or 'cuda:N', not {device!r} (use the onnxruntime "
                        "backend on the CPU)")


def metadata_from_manifest(manifest: dict) -> dict[str, str]:
    """The session metadata of an engine: its ONNX's `pfdeploy.*` metadata plus engine facts."""
    meta = dict((manifest.get("onnx") or {}).get("metadata") or {})
    env = manifest.get("environment") or {}
    meta["pfdeploy.precision"] = str(manifest.get("precision") or meta.get("pfdeploy.precision", "fp32"))
    meta["pfdeploy.engine.tensorrt_version"] = str(env.get("tensorrt_version"))
    meta["pfdeploy.engine.gpu_name"] = str(env.get("gpu_name"))
    meta["pfdeploy.engine.batch"] = json.dumps(manifest.get("batch"))
    return meta


def spec_from_manifest(manifest: dict):
    """InputSpec of an engine from its manifest: input format, image size, batch range, and the input
    dtype from the manifest's `io` section (an FP16-IO engine takes float16; float32 when absent)."""
    profile = manifest.get("profile") or {}
    batch = manifest.get("batch") or {}
    if len(profile) != 1 or not batch:
        raise PfdeployError("engine manifest lacks a single-input profile; rebuild with `pfdeploy build-engine`")
    name, shapes = next(iter(profile.items()))
    fmt = manifest.get("input_format") or "float-nchw"
    max_shape = list(shapes["max"])
    size = max_shape[1] if fmt == "uint8-nhwc" else max_shape[2]
    inputs = (manifest.get("io") or {}).get("inputs") or []
    dtype = str(inputs[0].get("dtype")) if inputs else None
    if dtype is not None and fmt in IO_DTYPES and dtype not in IO_DTYPES[fmt]:
        raise PfdeployError(f"engine manifest says input {name!r} is {dtype}, which a {fmt} engine cannot take; "
                            "rebuild the engine with `pfdeploy build-engine --force`")
    return spec_for_format(fmt, int(size), name=name, dtype=dtype, min_batch=int(batch["min"]),
                           max_batch=int(batch["max"]))


def check_plan(plan_path: Path, manifest: dict, environment: dict) -> None:
    """Refuse a plan whose bytes or build environment do not match (before TensorRT sees it)."""
    from pfdeploy.engines.manifest import check_loadable, check_plan_matches

    check_plan_matches(plan_path, manifest)
    ok, reason = check_loadable(manifest, environment)
    if not ok:
        raise PfdeployError(f"cannot load {plan_path} here: {reason}")


class TensorRTSession(Session):
    """Runs a TensorRT engine (.plan/.engine with its manifest) on the GPU."""

    backend = "tensorrt"
    thread_safe = False

    def __init__(self, path: str | Path, *, device: str = "cuda", cuda_graph: bool = False):
        from pfdeploy.engines.environment import current_environment, require_tensorrt
        from pfdeploy.engines.manifest import read_manifest
        from pfdeploy.limits import require_regular_file

        path = require_regular_file(path, "engine", "build one with `pfdeploy build-engine`")
        requested = device_index_of(device)
        manifest = read_manifest(path)
        spec = spec_from_manifest(manifest)
        trt = require_tensorrt()
        index = self._device_index(requested)
        check_plan(path, manifest, current_environment(index))  # the device the engine will run on
        super().__init__(spec, metadata_from_manifest(manifest), device)
        self.path, self.manifest = path, manifest
        self._device_index = index
        self._resources: list[Any] = []
        self._use_graphs = cuda_graph
        self._graphs: dict[int, Any] = {}
        self._graph_contexts: dict[int, Any] = {}  # batch size -> the execution context its graph replays
        self._graphless: set[int] = set()  # batch sizes whose capture failed (or past the limit): plain enqueue
        try:
            with self._on_device():
                self._open_engine(trt, path)
        except BaseException:
            self._release()  # whatever was allocated before the failure
            raise

    @staticmethod
    def _device_index(index: int | None) -> int:
        """`index` (None: this thread's current device), checked to name a device; no such device (or no
        usable GPU) is a MissingDependencyError. The current device is not changed."""
        from pfdeploy.errors import MissingDependencyError
        from pfdeploy.runtime.cuda_memory import cuda_call, cudart

        rt, fix = cudart(), "no usable CUDA GPU: check the NVIDIA driver and CUDA_VISIBLE_DEVICES"
        current = int(cuda_call(rt.cudaGetDevice(), "cudaGetDevice", fix=fix, error=MissingDependencyError))
        if index is None:
            return current
        count = int(cuda_call(rt.cudaGetDeviceCount(), "cudaGetDeviceCount", fix=fix, error=MissingDependencyError))
        if not 0 <= index < count:
            raise MissingDependencyError(f"no CUDA device {index}: {count} visible; {fix}")
        return index

    def _on_device(self):
        """The engine's device current on the calling thread for a block, the caller's again after it (every
        run path takes it inside the lock)."""
        from pfdeploy.runtime.cuda_memory import on_device

        return on_device(self._device_index)

    def _own(self, resource):
        self._resources.append(resource)
        return resource

    def _open_engine(self, trt, path: Path) -> None:
        from pfdeploy.runtime.cuda_memory import HostDeviceBuffer, Stream

        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        version_compatible = bool((self.manifest.get("build") or {}).get("version_compatible"))
        if version_compatible:  # the plan carries TensorRT's lean runtime: host code TensorRT must be allowed to run
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            if version_compatible:
                raise PfdeployError(
                    f"TensorRT {getattr(trt, '__version__', '?')} could not deserialize the version-compatible "
                    f"plan {path}, though its manifest matches this machine and host code was allowed; see "
                    "TensorRT's message above (a plan from a newer TensorRT than this one does not load)")
            raise PfdeployError(f"TensorRT could not deserialize {path}; rebuild it on this machine "
                                "(`pfdeploy build-engine --force`)")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise PfdeployError(f"TensorRT could not create an execution context for {path}; check free GPU "
                                "memory (nvidia-smi)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise PfdeployError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; pfdeploy runs "
                                "single-input, single-output classifiers")
        self._in_name, self._out_name = inputs[0], outputs[0]
        in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._in_name)))
        if in_dtype.name != self.input_spec.dtype:
            raise PfdeployError(f"engine input is {in_dtype.name} but its manifest says {self.input_spec.dtype}; "
                                "rebuild the engine with `pfdeploy build-engine --force`")
        max_in = tuple(self._engine.get_tensor_profile_shape(self._in_name, 0)[2])
        self._set_shape(max_in)  # output shape at the profile's max batch sizes the output buffer
        max_out = tuple(self._context.get_tensor_shape(self._out_name))
        out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._out_name)))
        self._stream = self._own(Stream())
        self._input = self._own(HostDeviceBuffer(max_in, in_dtype))
        self._output = self._own(HostDeviceBuffer(max_out, out_dtype))
        self._set_address(self._in_name, self._input.device.ptr)
        self._set_address(self._out_name, self._output.device.ptr)

    # --- execution -----------------------------------------------------------------------------

    def _set_shape(self, shape: tuple[int, ...], context=None) -> None:
        if not (context or self._context).set_input_shape(self._in_name, tuple(int(d) for d in shape)):
            raise PfdeployError(f"TensorRT rejected input shape {tuple(shape)}; the engine's profile is "
                                f"{self.manifest.get('batch')}")

    def _set_address(self, name: str, ptr: int, context=None) -> None:
        if not (context or self._context).set_tensor_address(name, int(ptr)):
            from pfdeploy.runtime.cuda_memory import ALIGNMENT

            why = f"it is not {ALIGNMENT}-byte aligned" if int(ptr) % ALIGNMENT else "see TensorRT's message above"
            raise PfdeployError(f"TensorRT refused address {int(ptr):#x} for tensor {name!r} ({why}); IO tensors "
                                f"need {ALIGNMENT}-byte aligned device memory on the engine's GPU")

    def _execute(self, context=None) -> None:
        if not (context or self._context).execute_async_v3(int(self._stream)):
            raise PfdeployError("TensorRT execute_async_v3 failed; see the TensorRT log above")

    def _enqueue(self, batch: int) -> None:
        """Queue execution of `batch` images already in the session's input buffer."""
        if self._use_graphs and batch not in self._graphless:
            graph = self._graphs.get(batch) or self._capture(batch)
            if graph is not None:
                graph.launch()
                return
        self._execute()

    def _plain_from_now_on(self, batch: int, why: str) -> None:
        level = logging.DEBUG if self._graphless else logging.WARNING  # warn once per session
        self._graphless.add(batch)
        log.log(level, "%s for batch %d of %s; running it with plain enqueue instead (execute_async_v3)",
                why, batch, self.path.name)

    def _capture(self, batch: int):
        """Capture execute_async_v3 of `batch` on an execution context of its own, set to that shape and
        the session's buffers once, after one plain run (as TensorRT requires before a capture).

        If the capture fails, or MAX_GRAPH_SHAPES batch sizes have graphs already, the shape runs with
        plain enqueue from then on (None is returned): a failed capture is ended and its error cleared by
        CudaGraph, never replayed.
        """
        from pfdeploy.runtime.cuda_memory import CudaGraph, GraphCaptureError

        if len(self._graphs) >= MAX_GRAPH_SHAPES:
            self._plain_from_now_on(batch, f"{MAX_GRAPH_SHAPES} batch sizes have CUDA graphs already")
            return None
        context = self._engine.create_execution_context()
        if context is None:
            self._plain_from_now_on(batch, "TensorRT could not create an execution context for a CUDA graph")
            return None
        self._set_shape((batch, *self._input.host.shape[1:]), context)
        self._set_address(self._in_name, self._input.device.ptr, context)
        self._set_address(self._out_name, self._output.device.ptr, context)
        self._execute(context)
        self._stream.synchronize()
        try:
            graph = CudaGraph(self._stream, lambda: context.execute_async_v3(int(self._stream)))
        except GraphCaptureError as exc:
            self._plain_from_now_on(batch, str(exc))
            return None
        self._graph_contexts[batch] = context  # referenced as long as its graph
        self._graphs[batch] = self._own(graph)
        return graph

    def _finish(self) -> np.ndarray:
        out = self._output.download(tuple(self._context.get_tensor_shape(self._out_name)), self._stream)
        self._stream.synchronize()
        return out.astype(np.float32, copy=True)

    def _run(self, array: np.ndarray) -> np.ndarray:
        with self._on_device():
            self._set_shape(array.shape)
            self._input.upload(np.ascontiguousarray(array), self._stream)
            self._enqueue(array.shape[0])
            return self._finish()

    def _run_tensor(self, tensor: Any) -> np.ndarray:
        if not tensor.is_cuda:
            return self._run(tensor.detach().contiguous().numpy())
        import torch

        with self._on_device():
            tensor = tensor.detach()
            if tensor.device.index != self._device_index:  # TensorRT reads only its own GPU's memory
                tensor = tensor.to(torch.device("cuda", self._device_index))
            tensor = tensor.contiguous()
            torch.cuda.current_stream(tensor.device).synchronize()  # its producer may run on torch's stream
            return self._run_device_pointer(tensor.data_ptr(), tuple(tensor.shape))

    def _run_device_pointer(self, ptr: int, shape: tuple[int, ...]) -> np.ndarray:
        """Run a batch already in this GPU's memory at `ptr`: bound in place (zero-copy) when 256-byte
        aligned, as TensorRT requires; otherwise copied on the device into the session's input buffer."""
        from pfdeploy.runtime.cuda_memory import ALIGNMENT, copy_async, nbytes_of

        self._set_shape(shape)
        if int(ptr) % ALIGNMENT:
            copy_async(self._input.device.ptr, int(ptr), nbytes_of(shape, self._input.host.dtype), "dtod",
                       self._stream)
            self._enqueue(shape[0])
            return self._finish()
        self._set_address(self._in_name, ptr)
        try:
            self._execute()  # not a CUDA graph: those read the session's own input buffer
            return self._finish()
        finally:
            self._set_address(self._in_name, self._input.device.ptr)

    def device_fn(self, batch: np.ndarray) -> Callable[[], None] | None:
        with self._lock, self._on_device():
            self._set_shape(batch.shape)
            self._input.upload(np.ascontiguousarray(batch), self._stream)
            self._stream.synchronize()

        def run() -> None:
            with self._lock, self._on_device():
                self._set_shape(batch.shape)
                self._enqueue(batch.shape[0])
                self._stream.synchronize()

        return run

    def _release(self) -> None:
        resources, self._resources, self._graphs = self._resources, [], {}
        failure = None
        try:
            with contextlib.ExitStack() as device:
                if resources and getattr(self, "_device_index", None) is not None:
                    try:
                        device.enter_context(self._on_device())  # free on the engine's device
                    except PfdeployError as exc:  # free anyway, then report
                        failure = exc
                for resource in reversed(resources):  # graphs, then buffers, then the stream
                    try:
                        resource.free()
                    except PfdeployError as exc:  # free the rest before reporting
                        failure = failure or exc
        except PfdeployError as exc:  # the caller's device could not be made current again
            failure = failure or exc
        self._graph_contexts = {}  # contexts before the engine, as TensorRT requires
        self._context = self._engine = self._runtime = None
        if failure is not None:
            raise failure
