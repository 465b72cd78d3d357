"""PyTorch backend: eager or `torch.compile`, CPU or CUDA, FP32 or FP16, optional channels-last.

Input is what the matching ONNX graph takes (float32 NCHW, or uint8 NHWC normalized inside the
session exactly as the `uint8-nhwc` graph does); logits come back as float32 NumPy. A CUDA tensor
already on the session's device is used without a copy. On CUDA, `cuda_graph=True` captures one
CUDA graph per input shape on the session's device (replayed on later calls of that shape).
CPU sessions are thread-safe (the model is only read); CUDA sessions (one pinned staging buffer,
CUDA graphs) serialize their calls with a lock. FP32 on CUDA means FP32: TF32 convolutions and
matmuls (on by default in PyTorch's cuDNN) are off inside the session's calls unless `tf32=True`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.runtime.session import Session, spec_for_format

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
COMPILE_MODES = {True: "default", "default": "default", "reduce-overhead": "reduce-overhead",
                 "max-autotune": "max-autotune"}
HEAD_KEYS = ("fc.weight", "head.weight")


@contextmanager
def tf32_mode(allow: bool) -> Iterator[None]:
    """Let (or stop) cuDNN convolutions and CUDA matmuls use TF32 inside the block; restores the
    process-wide flags after it (a CUDA session holds its lock around every call)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32 = matmul.allow_tf32 = allow
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def _torch_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("device='cuda' needs a CUDA GPU and a CUDA build of PyTorch; "
                                     "none found, use device='cpu'")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise PfdeployError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    if device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def metadata_for_model(model: torch.nn.Module, *, input_format: str, precision: str,
                       checkpoint_sha256: str = "random") -> dict[str, str]:
    """The `pfdeploy.*` metadata an export of `model` would carry (same keys as ONNX metadata)."""
    from pfdeploy.calibration.preprocess import preprocess_for

    cfg = model.pretrained_cfg
    overrides = dict(getattr(model, "overrides", {}))
    pre = preprocess_for(cfg.name, overrides.get("img_size"))
    return {
        "pfdeploy.model": cfg.name,
        "pfdeploy.num_classes": str(num_classes_of_model(model)),
        "pfdeploy.overrides": json.dumps(overrides, sort_keys=True),
        "pfdeploy.checkpoint_sha256": checkpoint_sha256,
        "pfdeploy.preprocess": json.dumps(pre.to_dict()),
        "pfdeploy.input_format": input_format,
        "pfdeploy.precision": precision,
        "pfdeploy.pf_layers": str(cfg.pf_layers),
    }


def num_classes_of_model(model: torch.nn.Module) -> int:
    """Outputs of the classifier (`fc` of the ResNets, `head` of the transformers)."""
    head = getattr(model, "fc", None) or getattr(model, "head", None)
    return int(head.out_features) if head is not None else int(model.pretrained_cfg.num_classes)


def num_classes_of_checkpoint(path: str | Path) -> int | None:
    """Rows of the classifier weight in a checkpoint (None if it has no fc/head weight)."""
    from pfdeploy.models.checkpoint import read_checkpoint, state_dict_from_checkpoint

    state = state_dict_from_checkpoint(read_checkpoint(path))
    return next((int(state[k].shape[0]) for k in HEAD_KEYS if k in state), None)


def model_from_name(name: str, *, checkpoint: str | Path | None = None, num_classes: int | None = None,
                    overrides: dict[str, Any] | None = None) -> tuple[torch.nn.Module, str]:
    """A registered model (with `checkpoint` loaded if given) and its checkpoint sha256."""
    from pfdeploy._io import sha256_file
    from pfdeploy.models import create_model, load_checkpoint

    if num_classes is None and checkpoint is not None:
        num_classes = num_classes_of_checkpoint(checkpoint)
    model = create_model(name, num_classes=num_classes or 1000, **(overrides or {}))
    if checkpoint is None:
        log.warning("%s has random weights (no checkpoint given)", name)
        return model, "random"
    return load_checkpoint(model, checkpoint), sha256_file(checkpoint)


class TorchSession(Session):
    """Runs a torch.nn.Module image classifier."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, *, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = False, compile: bool | str = False, cuda_graph: bool = False,
                 input_format: str = "float-nchw", metadata: dict[str, str] | None = None,
                 tf32: bool = False):
        if precision not in PRECISIONS:
            raise PfdeployError(f"torch backend precision must be one of {sorted(PRECISIONS)}, got "
                                f"{precision!r} (INT8 runs through onnxruntime or tensorrt)")
        if compile not in (False, None) and compile not in COMPILE_MODES:
            raise PfdeployError(f"compile must be False, True or one of {sorted(set(COMPILE_MODES.values()))}")
        self._device = _torch_device(device)
        if cuda_graph and self._device.type != "cuda":
            raise PfdeployError("cuda_graph=True needs device='cuda'")
        meta = metadata or metadata_for_model(model, input_format=input_format, precision=precision,
                                              checkpoint_sha256="in-memory")
        meta = {**meta, "pfdeploy.precision": precision, "pfdeploy.input_format": input_format}
        size = getattr(model, "img_size", None) or model.pretrained_cfg.input_size[-1]
        super().__init__(spec_for_format(input_format, int(size)), meta, str(self._device))
        self._dtype = PRECISIONS[precision]
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._model = model.eval().to(self._device, dtype=self._dtype, memory_format=self._memory_format)
        if compile not in (False, None):
            self._model = torch.compile(self._model, mode=COMPILE_MODES[compile])
        pre = self.preprocess
        self._mean = torch.tensor(pre.mean, device=self._device).view(1, 3, 1, 1) if pre else None
        self._std = torch.tensor(pre.std, device=self._device).view(1, 3, 1, 1) if pre else None
        self._cuda_graph = cuda_graph
        self._tf32 = bool(tf32)
        self.thread_safe = self._device.type == "cpu"  # CUDA: shared pinned buffer and graphs
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self._pinned: torch.Tensor | None = None

    # --- compute -------------------------------------------------------------------------------

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor in the input spec's layout -> logits on the device."""
        if self.input_spec.dtype == "uint8":  # same arithmetic as normalize_uint8 / the uint8 graph
            x = (x.permute(0, 3, 1, 2).float() / 255.0 - self._mean) / self._std
        x = x.to(dtype=self._dtype, memory_format=self._memory_format)
        math_mode = tf32_mode(self._tf32) if self._device.type == "cuda" else nullcontext()
        with torch.no_grad(), math_mode:
            return self._model(x)

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        return self._graph_replay(x) if self._cuda_graph else self._forward(x)

    def _graph_replay(self, x: torch.Tensor) -> torch.Tensor:
        """Replay (capturing on first use) the CUDA graph of x's shape, on the session's device."""
        with torch.cuda.device(self._device):  # capture and replay on device N, whatever is current
            key = tuple(x.shape)
            if key not in self._graphs:
                self._graphs[key] = self._capture(x)
            graph, static_in, static_out = self._graphs[key]
            static_in.copy_(x)
            graph.replay()
            return static_out

    def _capture(self, x: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """(graph, static input, static output) of one forward pass, captured on a stream of this device."""
        static_in = x.clone()
        side = torch.cuda.Stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):  # warm-up outside capture, as torch.cuda.graph requires
            for _ in range(3):
                self._forward(static_in)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):  # not torch's shared default capture stream (device of first use)
            static_out = self._forward(static_in)
        return graph, static_in, static_out

    def _to_host(self, logits: torch.Tensor) -> np.ndarray:
        return logits.float().cpu().numpy()  # .cpu() synchronizes with the device

    # --- input paths ---------------------------------------------------------------------------

    def _stage(self, array: np.ndarray) -> torch.Tensor:
        """Host array -> device tensor; through a reused pinned buffer on CUDA."""
        host = torch.from_numpy(np.ascontiguousarray(array))
        if self._device.type == "cpu":
            return host
        n = host.numel()
        if self._pinned is None or self._pinned.numel() < n or self._pinned.dtype != host.dtype:
            self._pinned = torch.empty(n, dtype=host.dtype, pin_memory=True)
        pinned = self._pinned[:n].view(host.shape)
        pinned.copy_(host)
        return pinned.to(self._device, non_blocking=True)

    def _run(self, array: np.ndarray) -> np.ndarray:
        return self._to_host(self._compute(self._stage(array)))

    def _run_tensor(self, tensor: torch.Tensor) -> np.ndarray:
        if tensor.device == self._device:
            return self._to_host(self._compute(tensor.detach()))  # zero-copy: already where it runs
        if tensor.device.type == "cpu":
            return self._run(tensor.detach().numpy())
        raise PfdeployError(f"tensor is on {tensor.device} but this session runs on {self._device}; "
                            f"move it with tensor.to('{self._device}')")

    def device_fn(self, batch: np.ndarray) -> Callable[[], None] | None:
        if self._device.type != "cuda":
            return None
        with self._lock:  # the pinned staging buffer and the graphs are shared with session calls
            staged = self._stage(batch).clone()

        def run() -> None:
            with self._lock:
                self._compute(staged)
                torch.cuda.synchronize(self._device)

        return run

    def _release(self) -> None:
        self._graphs.clear()
        self._model = None
        self._pinned = None


def torch_session(target: Any, *, checkpoint: str | Path | None = None, num_classes: int | None = None,
                  overrides: dict[str, Any] | None = None, **options: Any) -> TorchSession:
    """A TorchSession from a registered name, an nn.Module, or an ONNX file's metadata."""
    if isinstance(target, torch.nn.Module):
        if not hasattr(target, "pretrained_cfg"):
            raise PfdeployError("the torch backend needs a pfdeploy model (from pfdeploy.models.create_model)")
        if checkpoint is not None or num_classes is not None or overrides:
            raise PfdeployError("checkpoint/num_classes/overrides apply to a model name; load weights into the "
                                "module yourself (pfdeploy.models.load_checkpoint)")
        return TorchSession(target, **options)
    path = Path(str(target))
    if path.suffix == ".onnx":
        if num_classes is not None or overrides:
            raise PfdeployError("num_classes/overrides come from the ONNX metadata; do not pass them with an "
                                ".onnx file")
        return _torch_session_from_onnx(path, checkpoint, options)
    model, sha = model_from_name(str(target), checkpoint=checkpoint, num_classes=num_classes,
                                 overrides=overrides)
    fmt, precision = options.get("input_format", "float-nchw"), options.get("precision", "fp32")
    meta = metadata_for_model(model, input_format=fmt, precision=precision, checkpoint_sha256=sha)
    return TorchSession(model, metadata=meta, **options)


def _torch_session_from_onnx(path: Path, checkpoint, options: dict[str, Any]) -> TorchSession:
    """The PyTorch model an ONNX file was exported from (by its metadata), same input format."""
    from pfdeploy.export import model_from_metadata, read_metadata

    if not path.is_file():
        raise PfdeployError(f"ONNX file {path} not found")
    meta = read_metadata(path)
    if "pfdeploy.model" not in meta:
        raise PfdeployError(f"{path} carries no pfdeploy metadata; the torch backend cannot rebuild its model")
    model = model_from_metadata(meta, checkpoint=checkpoint)
    options.setdefault("input_format", meta.get("pfdeploy.input_format", "float-nchw"))
    meta = {**meta, "pfdeploy.precision": options.get("precision", "fp32")}
    return TorchSession(model, metadata=meta, **options)
