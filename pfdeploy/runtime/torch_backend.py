"""PyTorch backend: eager or `torch.compile`, CPU or CUDA, FP32 or FP16, channels-last, BatchNorm folded.

Input is what the matching ONNX graph takes (float32 NCHW, or uint8 NHWC normalized inside the
session exactly as the `uint8-nhwc` graph does); logits come back as float32 NumPy. A CUDA tensor
already on the session's device is used without a copy. On CUDA, `cuda_graph=True` captures one
CUDA graph per input shape on the session's device (replayed on later calls of that shape).
CPU sessions are thread-safe (the model is only read); CUDA sessions (one pinned staging buffer,
CUDA graphs) serialize their calls with a lock. FP32 on CUDA means FP32: TF32 convolutions and
matmuls (on by default in PyTorch's cuDNN) are off inside the session's calls unless `tf32=True`.

A session runs the model prepared for inference (`inference_plan`, a pure function of the options,
the model family and the device): BatchNorm folded into the convolutions (`fold_bn`, default on;
pfdeploy.runtime.fold), channels-last for the CNNs on CUDA (`channels_last=None`), optionally
`torch.compile`d (`compile=True`: Inductor "max-autotune" on CUDA, whose CUDA graphs replace the
session's own, "default" on the CPU) and optionally with the PF layers fused into pfdeploy's Triton
kernel (`fused=True`, CUDA; pfdeploy.kernels). The model given is not changed when it is folded or
fused (a copy is prepared). The PyTorch *reference* of verification is never prepared: verify
builds it from the metadata itself, and deploy's reference accuracy passes `fold_bn=False`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.runtime.session import Session, spec_for_format

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
#: torch.compile modes a session takes (`compile=True` picks one per device: `default_compile_mode`).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Modes in which Inductor captures CUDA graphs itself (on CUDA), so the session does not capture its own.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
#: Model families that are convolutional networks: channels-last by default on CUDA.
CNN_FAMILIES = ("resnet",)
HEAD_KEYS = ("fc.weight", "head.weight")


@dataclass(frozen=True)
class InferencePlan:
    """How a torch session prepares and runs its model (see `inference_plan`)."""

    fold_bn: bool  # BatchNorm folded into the preceding convolutions
    channels_last: bool  # weights and inputs in channels-last memory format
    compile_mode: str | None  # torch.compile mode (Inductor), None: eager
    cuda_graph: bool  # the session captures and replays its own CUDA graph per input shape
    fused: bool  # PF layers through pfdeploy's fused Triton kernel (pfdeploy.kernels)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view (recorded in `session.describe()` and so in bench reports)."""
        return asdict(self)


def default_compile_mode(device_type: str) -> str:
    """`compile=True`: Inductor's max-autotune on CUDA (autotuned convolutions and matmuls, CUDA graphs),
    its default mode on the CPU (max-autotune there only lengthens the compile)."""
    return "max-autotune" if device_type == "cuda" else "default"


def inference_plan(*, family: str | None, device_type: str, fold_bn: bool = True, channels_last: bool | None = None,
                   compile: bool | str | None = False, cuda_graph: bool = False, fused: bool = False) -> InferencePlan:
    """The InferencePlan of a session's options (pure: no GPU, Triton or model needed).

    channels_last None: on for the CNN families (CNN_FAMILIES) on CUDA, else off. compile True: the
    device's `default_compile_mode`. A compile mode that captures CUDA graphs (CUDA_GRAPH_MODES) on
    CUDA makes the session's own capture unnecessary: `cuda_graph` is then satisfied by Inductor's.
    Refused in one line: an unknown compile mode, cuda_graph or fused off CUDA, fused without folding.
    """
    if compile in (False, None):
        mode = None
    elif compile is True:
        mode = default_compile_mode(device_type)
    elif isinstance(compile, str) and compile in COMPILE_MODES:
        mode = compile
    else:
        raise PfdeployError(f"compile must be False, True or one of {', '.join(COMPILE_MODES)}; got {compile!r}")
    if cuda_graph and device_type != "cuda":
        raise PfdeployError("cuda_graph=True needs device='cuda'")
    if fused and device_type != "cuda":
        raise PfdeployError("fused=True runs pfdeploy's Triton kernel, on CUDA only; use device='cuda' (on the "
                            "CPU the unfused model is what runs fastest)")
    if fused and not fold_bn:
        raise PfdeployError("fused=True fuses the folded convolutions; drop fold_bn=False")
    inductor_graphs = device_type == "cuda" and mode in CUDA_GRAPH_MODES
    if cuda_graph and inductor_graphs:
        log.info("compile=%r captures CUDA graphs itself; the session does not capture its own", mode)
    if channels_last is None:
        channels_last = device_type == "cuda" and family in CNN_FAMILIES
    return InferencePlan(fold_bn=bool(fold_bn), channels_last=bool(channels_last), compile_mode=mode,
                         cuda_graph=bool(cuda_graph) and not inductor_graphs, fused=bool(fused))


def prepared_model(model: torch.nn.Module, plan: InferencePlan) -> torch.nn.Module:
    """`model` as `plan` runs it (before the move to the device): a folded or fused copy, or the model itself."""
    if plan.fused:
        from pfdeploy.kernels import fuse_pf_layers

        return fuse_pf_layers(model)  # folds first
    if plan.fold_bn:
        from pfdeploy.runtime.fold import fold_batchnorm

        return fold_batchnorm(model)
    return model.eval()


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


class TorchRunner(Session):
    """Base of the sessions that run a torch callable (TorchSession, the .pt2 backend's Pt2Session):
    staging through pinned memory, CUDA-graph capture and replay per shape, device-only timing.
    Subclasses set `_device`, `_cuda_graph`, `_tf32` and implement `_forward(x)` (device tensor in the
    input spec's layout -> logits on the device)."""

    _device: torch.device
    _cuda_graph: bool = False
    _tf32: bool = False

    def _init_runner(self) -> None:
        self.thread_safe = self._device.type == "cpu"  # CUDA: shared pinned buffer and graphs
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self._pinned: torch.Tensor | None = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _math_mode(self):
        return tf32_mode(self._tf32) if self._device.type == "cuda" else nullcontext()

    # --- compute -------------------------------------------------------------------------------

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
        self._pinned = None


class TorchSession(TorchRunner):
    """Runs a torch.nn.Module image classifier, prepared for inference as `inference_plan` says."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, *, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool | None = None, compile: bool | str = False, cuda_graph: bool = False,
                 input_format: str = "float-nchw", metadata: dict[str, str] | None = None,
                 tf32: bool = False, fold_bn: bool = True, fused: bool = False):
        if precision not in PRECISIONS:
            raise PfdeployError(f"torch backend precision must be one of {sorted(PRECISIONS)}, got "
                                f"{precision!r} (INT8 runs through onnxruntime or tensorrt)")
        family = getattr(getattr(model, "pretrained_cfg", None), "family", None)
        self._device = _torch_device(device)
        self.plan = inference_plan(family=family, device_type=self._device.type, fold_bn=fold_bn,
                                   channels_last=channels_last, compile=compile, cuda_graph=cuda_graph, fused=fused)
        if self.plan.fused:
            from pfdeploy.kernels import triton_problem

            problem = triton_problem()
            if problem:
                raise MissingDependencyError(f"fused=True: {problem}")
        meta = metadata or metadata_for_model(model, input_format=input_format, precision=precision,
                                              checkpoint_sha256="in-memory")
        meta = {**meta, "pfdeploy.precision": precision, "pfdeploy.input_format": input_format}
        size = getattr(model, "img_size", None) or model.pretrained_cfg.input_size[-1]
        super().__init__(spec_for_format(input_format, int(size)), meta, str(self._device))
        self._dtype = PRECISIONS[precision]
        self._memory_format = torch.channels_last if self.plan.channels_last else torch.contiguous_format
        ready = prepared_model(model, self.plan)
        self._model = ready.to(self._device, dtype=self._dtype, memory_format=self._memory_format)
        if self.plan.compile_mode is not None:
            # One graph per input shape (dynamic=False: batch sizes are specialized, as CUDA graphs are).
            self._model = torch.compile(self._model, mode=self.plan.compile_mode, dynamic=False)
        pre = self.preprocess
        self._mean = torch.tensor(pre.mean, device=self._device).view(1, 3, 1, 1) if pre else None
        self._std = torch.tensor(pre.std, device=self._device).view(1, 3, 1, 1) if pre else None
        self._cuda_graph = self.plan.cuda_graph
        self._tf32 = bool(tf32)
        self._init_runner()

    def describe(self) -> dict[str, Any]:
        """Session.describe plus the inference plan (folded, channels-last, compile mode, CUDA graphs, fused)."""
        return {**super().describe(), "plan": self.plan.to_dict()}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor in the input spec's layout -> logits on the device."""
        if self.input_spec.dtype == "uint8":  # same arithmetic as normalize_uint8 / the uint8 graph
            x = (x.permute(0, 3, 1, 2).float() / 255.0 - self._mean) / self._std
        x = x.to(dtype=self._dtype, memory_format=self._memory_format)
        with torch.no_grad(), self._math_mode():
            return self._model(x)

    def _release(self) -> None:
        super()._release()
        self._model = None


def torch_session(target: Any, *, checkpoint: str | Path | None = None, num_classes: int | None = None,
                  overrides: dict[str, Any] | None = None, **options: Any) -> TorchSession:
    """A TorchSession from a registered name, an nn.Module, or an ONNX file's (or .pt2 package's) metadata."""
    if isinstance(target, torch.nn.Module):
        if not hasattr(target, "pretrained_cfg"):
            raise PfdeployError("the torch backend needs a pfdeploy model (from pfdeploy.models.create_model)")
        if checkpoint is not None or num_classes is not None or overrides:
            raise PfdeployError("checkpoint/num_classes/overrides apply to a model name; load weights into the "
                                "module yourself (pfdeploy.models.load_checkpoint)")
        return TorchSession(target, **options)
    path = Path(str(target))
    if path.suffix in (".onnx", ".pt2"):
        if num_classes is not None or overrides:
            raise PfdeployError(f"num_classes/overrides come from the artifact's metadata; do not pass them with "
                                f"a {path.suffix} file")
        return _torch_session_from_artifact(path, checkpoint, options)
    model, sha = model_from_name(str(target), checkpoint=checkpoint, num_classes=num_classes,
                                 overrides=overrides)
    fmt, precision = options.get("input_format", "float-nchw"), options.get("precision", "fp32")
    meta = metadata_for_model(model, input_format=fmt, precision=precision, checkpoint_sha256=sha)
    return TorchSession(model, metadata=meta, **options)


def _torch_session_from_artifact(path: Path, checkpoint, options: dict[str, Any]) -> TorchSession:
    """The PyTorch model an ONNX file or .pt2 package was exported from (by its metadata), same input format."""
    from pfdeploy.export import model_from_metadata, read_metadata

    if not path.is_file():
        raise PfdeployError(f"{'ONNX file' if path.suffix == '.onnx' else '.pt2 package'} {path} not found")
    if path.suffix == ".pt2":
        from pfdeploy.export.pt2 import read_pt2_metadata

        meta = read_pt2_metadata(path)
    else:
        meta = read_metadata(path)
    if "pfdeploy.model" not in meta:
        raise PfdeployError(f"{path} carries no pfdeploy metadata; the torch backend cannot rebuild its model")
    model = model_from_metadata(meta, checkpoint=checkpoint)
    options.setdefault("input_format", meta.get("pfdeploy.input_format", "float-nchw"))
    meta = {**meta, "pfdeploy.precision": options.get("precision", "fp32")}
    return TorchSession(model, metadata=meta, **options)
