"""ONNX Runtime backend: a throughput-tuned InferenceSession behind the Session interface.

CPU by default; device="cuda" asks for the CUDA (and TensorRT, if `providers` names it) execution
providers of onnxruntime-gpu and fails loudly if they are not installed. `run` of an ONNX Runtime
session is thread-safe, so this Session is too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pfdeploy.errors import PfdeployError
from pfdeploy.runtime.session import InputSpec, Session

log = logging.getLogger(__name__)

ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


def ort_session(path: Path, device: str, intra_op_threads: int | None, providers: list[str] | None):
    """The throughput-tuned InferenceSession for `path` (the shared factory in ort_options)."""
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    return ort_session_from_onnx(path, device=device, intra_op_threads=intra_op_threads,
                                 providers=providers)


def input_spec_from_ort(node, metadata: dict[str, str]) -> InputSpec:
    """InputSpec of an ORT input node (name, shape, type), using metadata's input format."""
    if node.type not in ORT_DTYPES:
        raise PfdeployError(f"input {node.name!r} has type {node.type}; pfdeploy runs float32, float16 "
                            "or uint8 image inputs")
    dtype = ORT_DTYPES[node.type]
    dims = [d if isinstance(d, int) and d > 0 else None for d in node.shape]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise PfdeployError(f"input {node.name!r} has shape {node.shape}; expected (batch, C, H, W) or "
                            "(batch, H, W, C) with fixed image dimensions")
    fmt = metadata.get("pfdeploy.input_format") or ("uint8-nhwc" if dtype == "uint8" else "float-nchw")
    layout = "NHWC" if fmt == "uint8-nhwc" else "NCHW"
    batch = dims[0]
    return InputSpec(node.name, (None, *dims[1:]), dtype, layout, batch or 1, batch)


class OnnxRuntimeSession(Session):
    """Runs an ONNX file with ONNX Runtime; logits come back as float32 NumPy."""

    backend = "onnxruntime"
    thread_safe = True

    def __init__(self, path: str | Path, *, device: str = "cpu", intra_op_threads: int | None = None,
                 providers: list[str] | None = None):
        path = Path(path)
        if not path.is_file():
            raise PfdeployError(f"ONNX file {path} not found; export one with `pfdeploy export`")
        self._sess = ort_session(path, device, intra_op_threads, providers)
        metadata = dict(self._sess.get_modelmeta().custom_metadata_map)
        inputs, outputs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(inputs) != 1:
            raise PfdeployError(f"{path} has {len(inputs)} inputs; pfdeploy runs single-input image models")
        super().__init__(input_spec_from_ort(inputs[0], metadata), metadata, device)
        self.path = path
        self.providers = self._sess.get_providers()
        self._in_name = inputs[0].name
        self._out_names = [outputs[0].name]
        log.debug("onnxruntime session on %s with %s", path, self.providers)

    @property
    def inference_session(self):
        """The underlying onnxruntime.InferenceSession (for direct calls and comparisons)."""
        return self._sess

    def _run(self, array: np.ndarray) -> np.ndarray:
        out = self._sess.run(self._out_names, {self._in_name: array})[0]
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def _run_tensor(self, tensor: Any) -> np.ndarray:
        if tensor.device.type == "cpu":
            return self._run(tensor.detach().contiguous().numpy())
        if self.device != "cuda":
            raise PfdeployError("this onnxruntime session runs on the CPU; pass a CPU tensor or NumPy array")
        return self._run_bound(tensor.detach().contiguous())

    def _run_bound(self, tensor: Any) -> np.ndarray:
        """Zero-copy CUDA input through IO binding (onnxruntime-gpu)."""
        binding = self._sess.io_binding()
        binding.bind_input(self._in_name, "cuda", tensor.device.index or 0, np.dtype(self.input_spec.dtype).type,
                           list(tensor.shape), tensor.data_ptr())
        binding.bind_output(self._out_names[0], "cuda", tensor.device.index or 0)
        self._sess.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def device_fn(self, batch: np.ndarray) -> Callable[[], None] | None:
        if self.device != "cuda":
            return None
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch), "cuda", 0)
        binding = self._sess.io_binding()
        binding.bind_ortvalue_input(self._in_name, value)
        binding.bind_output(self._out_names[0], "cuda", 0)

        def run() -> None:
            self._sess.run_with_iobinding(binding)  # synchronous: returns when outputs are ready

        run.keepalive = value  # the bound OrtValue must outlive the binding
        return run

    def _release(self) -> None:
        self._sess = None
