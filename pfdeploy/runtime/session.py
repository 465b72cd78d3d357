"""The one Session interface every backend implements: input spec, validation, run, close.

Thread-safety: a Session whose `thread_safe` is True (onnxruntime, torch eager, openvino: a pool of
infer requests, one per concurrent call) may be called from several threads at once. One whose
`thread_safe` is False (tensorrt: one execution context and one set of staging buffers; torch on
CUDA: one pinned staging buffer and CUDA graphs) serializes calls with an internal lock, so it is
safe but not concurrent: open one session per thread for concurrent inference.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pfdeploy.choices import LAYOUTS
from pfdeploy.errors import PfdeployError


@dataclass(frozen=True)
class InputSpec:
    """What a session accepts: name, shape (None = any batch), dtype, layout and batch range."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    layout: str
    min_batch: int = 1
    max_batch: int | None = None

    @property
    def input_format(self) -> str:
        """`uint8-nhwc` for raw-byte inputs, else `float-nchw`."""
        return "uint8-nhwc" if self.layout == "NHWC" else "float-nchw"

    @property
    def image_size(self) -> int:
        """Height (= width) of the expected images."""
        return int(self.shape[1] if self.layout == "NHWC" else self.shape[2])

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return {**asdict(self), "shape": list(self.shape), "input_format": self.input_format}

    def example(self, batch: int = 1, seed: int = 0) -> np.ndarray:
        """A random valid input of `batch` images (uint8 bytes or standard-normal floats)."""
        rng = np.random.default_rng(seed)
        shape = (batch, *self.shape[1:])
        if self.dtype == "uint8":
            return rng.integers(0, 256, size=shape, dtype=np.uint8)
        return rng.standard_normal(shape).astype(self.dtype)

    def check(self, shape: tuple[int, ...], dtype: str) -> None:
        """Raise a one-line PfdeployError if an input of `shape`/`dtype` does not fit this spec."""
        want = f"({', '.join('N' if d is None else str(d) for d in self.shape)}) {self.dtype} {self.layout}"
        if len(shape) != len(self.shape):
            raise PfdeployError(
                f"input {self.name!r} must be {len(self.shape)}-D {want}, got shape {tuple(shape)}; "
                "add a batch dimension with x[None] for a single image"
            )
        if tuple(shape[1:]) != tuple(self.shape[1:]):
            hint = self._layout_hint(tuple(shape))
            raise PfdeployError(f"input {self.name!r} must be {want}, got shape {tuple(shape)}{hint}")
        if dtype != self.dtype:
            fix = (
                "pass raw uint8 pixels (this artifact normalizes inside the graph)"
                if self.dtype == "uint8"
                else f"convert with x.astype(np.{self.dtype})"
            )
            raise PfdeployError(f"input {self.name!r} must be {self.dtype}, got {dtype}; {fix}")
        batch = shape[0]
        if batch < self.min_batch or (self.max_batch is not None and batch > self.max_batch):
            top = "" if self.max_batch is None else f"..{self.max_batch}"
            raise PfdeployError(
                f"batch {batch} is outside this artifact's batch range {self.min_batch}{top}; "
                "split the batch or rebuild the artifact for a larger batch"
            )

    def _layout_hint(self, shape: tuple[int, ...]) -> str:
        if len(shape) == 4 and self.layout == "NCHW" and shape[1:] == (*self.shape[2:], self.shape[1]):
            return "; that looks like NHWC: transpose with x.transpose(0, 3, 1, 2)"
        if len(shape) == 4 and self.layout == "NHWC" and shape[1:] == (self.shape[3], *self.shape[1:3]):
            return "; that looks like NCHW: this artifact takes uint8 NHWC pixels"
        return f"; preprocess images to {self.image_size}x{self.image_size} (see session.preprocess)"


def spec_for_format(input_format: str, size: int, name: str = "input", dtype: str | None = None,
                    min_batch: int = 1, max_batch: int | None = None) -> InputSpec:
    """The InputSpec of an image model taking `input_format` at `size` x `size`."""
    if input_format not in LAYOUTS:
        raise PfdeployError(f"unknown input format {input_format!r}; use one of {sorted(LAYOUTS)}")
    if input_format == "uint8-nhwc":
        return InputSpec(name, (None, size, size, 3), "uint8", "NHWC", min_batch, max_batch)
    return InputSpec(name, (None, 3, size, size), dtype or "float32", "NCHW", min_batch, max_batch)


IMAGE_DTYPES = ("float32", "float16", "uint8")


def input_spec_from_graph(tensor, metadata: dict[str, str]) -> InputSpec:
    """The InputSpec of an ONNX graph input (a pfdeploy._onnxgraph.GraphTensor), laid out as the
    metadata's input format says; a fixed leading dimension is the only batch accepted."""
    if tensor.dtype not in IMAGE_DTYPES:
        raise PfdeployError(f"input {tensor.name!r} has type {tensor.dtype}; pfdeploy runs float32, float16 "
                            "or uint8 image inputs")
    dims = [d if isinstance(d, int) and d > 0 else None for d in tensor.dims]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise PfdeployError(f"input {tensor.name!r} has shape {list(tensor.dims)}; expected (batch, C, H, W) or "
                            "(batch, H, W, C) with fixed image dimensions")
    fmt = metadata.get("pfdeploy.input_format") or ("uint8-nhwc" if tensor.dtype == "uint8" else "float-nchw")
    batch = tensor.fixed_batch
    return InputSpec(tensor.name, (None, *dims[1:]), tensor.dtype, LAYOUTS.get(fmt, "NCHW"), batch or 1, batch)


def onnx_input_spec(model, path) -> tuple[InputSpec, dict[str, str]]:
    """(InputSpec, metadata) of a loaded single-input ONNX image model (`input_spec_from_graph`);
    a graph with another number of inputs is refused in one line naming `path`."""
    from pfdeploy._onnxgraph import graph_inputs

    metadata = {p.key: p.value for p in model.metadata_props}
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise PfdeployError(f"{path} has {len(inputs)} inputs; pfdeploy runs single-input image models")
    return input_spec_from_graph(inputs[0], metadata), metadata


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


class Session:
    """Base of every backend session: `session(batch) -> logits` (NumPy float32).

    Subclasses set `backend`, `device`, `input_spec`, `metadata` and implement `_run(array)`
    (and optionally `_run_tensor(tensor)` for zero-copy torch input, `device_fn(batch)`).
    """

    backend = "base"
    thread_safe = True

    def __init__(self, input_spec: InputSpec, metadata: dict[str, str], device: str = "cpu"):
        self.input_spec = input_spec
        self.metadata = dict(metadata)
        self.device = device
        self._closed = False
        self._lock = threading.Lock()

    # --- public API ----------------------------------------------------------------------------

    def __call__(self, batch: Any) -> np.ndarray:
        """Run one batch (NumPy array or torch tensor) and return logits as a NumPy array."""
        if self._closed:
            raise PfdeployError(f"this {self.backend} session is closed; load the artifact again")
        if _is_torch_tensor(batch):
            self.input_spec.check(tuple(batch.shape), str(batch.dtype).removeprefix("torch."))
            run: Callable[[Any], np.ndarray] = self._run_tensor
        else:
            if not isinstance(batch, np.ndarray):
                raise PfdeployError(f"session input must be a NumPy array or torch tensor, got "
                                    f"{type(batch).__name__}")
            self.input_spec.check(batch.shape, batch.dtype.name)
            run = self._run
        if self.thread_safe:
            return run(batch)
        with self._lock:
            return run(batch)

    @property
    def preprocess(self):
        """The Preprocess stored with the artifact (None if it carries none)."""
        from pfdeploy.calibration.preprocess import preprocess_from_metadata

        return preprocess_from_metadata(self.metadata, str(getattr(self, "path", f"the {self.backend} session")))

    @property
    def precision(self) -> str:
        """fp32, fp16 or int8, as the artifact states it."""
        return self.metadata.get("pfdeploy.precision", "fp32")

    def device_fn(self, batch: np.ndarray) -> Callable[[], None] | None:
        """A no-argument function running `batch` already staged on the device (GPU only).

        Used by the benchmark for device-only figures; None for CPU sessions, where device-only
        and end-to-end are the same thing.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """Backend, device, precision and input spec, for reports."""
        return {
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "model": self.metadata.get("pfdeploy.model"),
            "input": self.input_spec.to_dict(),
        }

    def close(self) -> None:
        """Release the backend's resources; later calls raise. Idempotent."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):  # best effort; explicit close() is the contract
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    # --- backend hooks -------------------------------------------------------------------------

    def _run(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_tensor(self, tensor: Any) -> np.ndarray:
        """Default for torch tensors: a CPU tensor is viewed as NumPy without a copy."""
        if tensor.device.type != "cpu":
            raise PfdeployError(f"this {self.backend} session runs on {self.device}; pass a CPU tensor "
                                "or a NumPy array")
        return self._run(tensor.detach().contiguous().numpy())

    def _release(self) -> None:
        pass
