"""TensorRT backend: a serialized engine run with cuda-python memory (no pycuda).

Before deserializing, the `<plan>.json` manifest is read and checked against this machine
(TensorRT version, GPU compute capability) and the plan's sha256, so a mismatched engine is refused
with a clear message instead of a TensorRT crash. Pinned host and device buffers are allocated once
for the optimization profile's max batch; each call copies in, sets the input shape, runs
`execute_async_v3` on one stream and copies out. With `cuda_graph=True` the execution of each batch
size is captured once as a CUDA graph and replayed. A session holds one IExecutionContext, which is
not thread-safe: calls are serialized by a lock (open one session per thread for concurrency).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pfdeploy.errors import PfdeployError
from pfdeploy.runtime.session import Session, spec_for_format

log = logging.getLogger(__name__)


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
    """InputSpec of an engine from its manifest: input format, image size and batch range."""
    profile = manifest.get("profile") or {}
    batch = manifest.get("batch") or {}
    if len(profile) != 1 or not batch:
        raise PfdeployError("engine manifest lacks a single-input profile; rebuild with `pfdeploy build-engine`")
    name, shapes = next(iter(profile.items()))
    fmt = manifest.get("input_format") or "float-nchw"
    max_shape = list(shapes["max"])
    size = max_shape[1] if fmt == "uint8-nhwc" else max_shape[2]
    return spec_for_format(fmt, int(size), name=name, min_batch=int(batch["min"]), max_batch=int(batch["max"]))


def check_plan(plan_path: Path, manifest: dict, environment: dict) -> None:
    """Refuse a plan whose bytes or build environment do not match (before TensorRT sees it)."""
    from pfdeploy._io import sha256_file
    from pfdeploy.engines.manifest import check_loadable

    recorded = (manifest.get("plan") or {}).get("sha256")
    if recorded and recorded != sha256_file(plan_path):
        raise PfdeployError(f"{plan_path} does not match its manifest (sha256 differs); the plan was replaced "
                            "or truncated: rebuild it with `pfdeploy build-engine --force`")
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

        path = Path(path)
        if not path.is_file():
            raise PfdeployError(f"engine {path} not found; build one with `pfdeploy build-engine`")
        if device != "cuda":
            raise PfdeployError(f"TensorRT engines run on device='cuda', not {device!r} (use the onnxruntime "
                                "backend on the CPU)")
        manifest = read_manifest(path)
        spec = spec_from_manifest(manifest)
        check_plan(path, manifest, current_environment())
        trt = require_tensorrt()
        super().__init__(spec, metadata_from_manifest(manifest), "cuda")
        self.path, self.manifest = path, manifest
        self._resources: list[Any] = []
        self._open_engine(trt, path)
        self._use_graphs = cuda_graph
        self._graphs: dict[int, Any] = {}

    def _open_engine(self, trt, path: Path) -> None:
        from pfdeploy.runtime.cuda_memory import HostDeviceBuffer, Stream

        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise PfdeployError(f"TensorRT could not deserialize {path}; rebuild it on this machine")
        self._context = self._engine.create_execution_context()
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
                                "rebuild the engine")
        max_in = tuple(self._engine.get_tensor_profile_shape(self._in_name, 0)[2])
        self._set_shape(max_in)  # output shape at the profile's max batch sizes the output buffer
        max_out = tuple(self._context.get_tensor_shape(self._out_name))
        out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._out_name)))
        self._stream = Stream()
        self._input = HostDeviceBuffer(max_in, in_dtype)
        self._output = HostDeviceBuffer(max_out, out_dtype)
        self._resources = [self._input, self._output, self._stream]
        self._bind(self._input.device.ptr)
        self._context.set_tensor_address(self._out_name, self._output.device.ptr)

    # --- execution -----------------------------------------------------------------------------

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(self._in_name, tuple(int(d) for d in shape)):
            raise PfdeployError(f"TensorRT rejected input shape {tuple(shape)}; the engine's profile is "
                                f"{self.manifest.get('batch')}")

    def _bind(self, ptr: int) -> None:
        self._context.set_tensor_address(self._in_name, int(ptr))

    def _enqueue(self, batch: int) -> None:
        """Queue execution of `batch` images already in the bound input memory."""
        if self._use_graphs:
            if batch not in self._graphs:
                self._graphs[batch] = self._capture()
            self._graphs[batch].launch()
        elif not self._context.execute_async_v3(int(self._stream)):
            raise PfdeployError("TensorRT execute_async_v3 failed; see the TensorRT log above")

    def _capture(self):
        """Capture execute_async_v3 for the current shape (after one plain run, as TensorRT requires)."""
        from pfdeploy.runtime.cuda_memory import CudaGraph

        if not self._context.execute_async_v3(int(self._stream)):
            raise PfdeployError("TensorRT execute_async_v3 failed before CUDA graph capture")
        self._stream.synchronize()
        graph = CudaGraph(self._stream, lambda: self._context.execute_async_v3(int(self._stream)))
        self._resources.append(graph)
        return graph

    def _run(self, array: np.ndarray) -> np.ndarray:
        n = array.shape[0]
        self._set_shape(array.shape)
        self._input.upload(np.ascontiguousarray(array), self._stream)
        self._enqueue(n)
        out = self._output.download(tuple(self._context.get_tensor_shape(self._out_name)), self._stream)
        self._stream.synchronize()
        return out.astype(np.float32, copy=True)

    def _run_tensor(self, tensor: Any) -> np.ndarray:
        if not tensor.is_cuda:
            return self._run(tensor.detach().contiguous().numpy())
        tensor = tensor.detach().contiguous()  # zero-copy: bind the tensor's own device memory
        import torch

        torch.cuda.current_stream().synchronize()  # the tensor's producer may run on torch's stream
        self._set_shape(tuple(tensor.shape))
        self._bind(tensor.data_ptr())
        try:
            if not self._context.execute_async_v3(int(self._stream)):
                raise PfdeployError("TensorRT execute_async_v3 failed; see the TensorRT log above")
            out = self._output.download(tuple(self._context.get_tensor_shape(self._out_name)), self._stream)
            self._stream.synchronize()
        finally:
            self._bind(self._input.device.ptr)
        return out.astype(np.float32, copy=True)

    def device_fn(self, batch: np.ndarray) -> Callable[[], None] | None:
        n = batch.shape[0]
        self._set_shape(batch.shape)
        self._input.upload(np.ascontiguousarray(batch), self._stream)
        self._stream.synchronize()

        def run() -> None:
            with self._lock:
                self._set_shape(batch.shape)
                self._enqueue(n)
                self._stream.synchronize()

        return run

    def _release(self) -> None:
        for resource in reversed(self._resources):
            resource.free()
        self._resources, self._graphs = [], {}
        self._context = self._engine = self._runtime = None
