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
from pfdeploy.runtime.session import Session, onnx_input_spec

log = logging.getLogger(__name__)


def ort_session(path: Path, device: str, intra_op_threads: int | None, providers: list[str] | None, model=None):
    """The throughput-tuned InferenceSession for `path` (the shared factory in ort_options)."""
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    return ort_session_from_onnx(path, device=device, intra_op_threads=intra_op_threads,
                                 providers=providers, model=model)


class OnnxRuntimeSession(Session):
    """Runs an ONNX file with ONNX Runtime; logits come back as float32 NumPy."""

    backend = "onnxruntime"
    thread_safe = True

    def __init__(self, path: str | Path, *, device: str = "cpu", intra_op_threads: int | None = None,
                 providers: list[str] | None = None):
        path = Path(path)
        if not path.is_file():
            raise PfdeployError(f"ONNX file {path} not found; export one with `pfdeploy export`")
        from pfdeploy._onnxfile import load_onnx

        model = load_onnx(path)  # one read: the session is made from this ModelProto too
        spec, metadata = onnx_input_spec(model, path)
        self._sess = ort_session(path, device, intra_op_threads, providers, model)
        outputs = self._sess.get_outputs()
        super().__init__(spec, metadata, device)
        self.path = path
        self.providers = self._sess.get_providers()
        self._in_name = spec.name
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
