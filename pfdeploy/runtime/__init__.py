"""runtime stage: one Session API over torch, onnxruntime and tensorrt, plus timing and benchmarks.

    from pfdeploy.runtime import load
    with load("r50_hybrid.onnx") as session:          # backend chosen from the artifact
        logits = session(batch)                       # NumPy (or torch) in, float32 NumPy logits out

Backends are imported only when used, so `import pfdeploy.runtime` needs neither onnxruntime nor
TensorRT. See `pfdeploy.runtime.session` for the thread-safety of each backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pfdeploy.errors import PfdeployError
from pfdeploy.runtime.session import InputSpec, Session

BACKENDS = ("torch", "onnxruntime", "tensorrt")
ENGINE_SUFFIXES = (".plan", ".engine")
OPTIONS = {
    "torch": {"checkpoint", "num_classes", "overrides", "precision", "channels_last", "compile",
              "cuda_graph", "input_format"},
    "onnxruntime": {"intra_op_threads", "providers"},
    "tensorrt": {"cuda_graph"},
}

__all__ = ["BACKENDS", "InputSpec", "Session", "backend_for", "load"]


def backend_for(target: Any) -> str:
    """The backend `load(target, backend="auto")` picks: by file suffix, else torch for a model name."""
    if not isinstance(target, (str, Path)):
        return "torch"  # an nn.Module
    suffix = Path(str(target)).suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    from pfdeploy.models import list_models, resolve_name

    try:
        resolve_name(str(target))
    except PfdeployError:
        raise PfdeployError(
            f"{target!r} is neither an artifact (.onnx, .plan, .engine) nor a registered model "
            f"({', '.join(list_models())})"
        ) from None
    return "torch"


def _check_options(backend: str, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - OPTIONS[backend] - {"preprocess"})
    if unknown:
        raise PfdeployError(
            f"unknown option(s) {', '.join(unknown)} for the {backend} backend; it accepts: "
            f"{', '.join(sorted(OPTIONS[backend] | {'preprocess'}))}"
        )


def load(path_or_model_name: Any, backend: str = "auto", device: str | None = None, **options: Any) -> Session:
    """Open a Session on an ONNX file, a TensorRT engine, a registered model name or a pfdeploy model.

    backend: "auto" (.onnx -> onnxruntime, .plan/.engine -> tensorrt, model name -> torch),
    or one of BACKENDS ("torch" on an .onnx file rebuilds the exported PyTorch model from its
    metadata). device: "cpu" or "cuda" (default: "cuda" for a TensorRT engine, else "cpu"). Options by backend:
    torch: checkpoint, num_classes, overrides, precision ("fp32"/"fp16"), channels_last, compile
    (False/True/"reduce-overhead"/"max-autotune"), cuda_graph, input_format;
    onnxruntime: intra_op_threads, providers; tensorrt: cuda_graph.
    Every backend: preprocess (a Preprocess or its dict) replaces the artifact's recorded one.
    Unknown options raise rather than being ignored.
    """
    chosen = backend_for(path_or_model_name) if backend == "auto" else backend
    if chosen not in BACKENDS:
        raise PfdeployError(f"unknown backend {backend!r}; use auto or one of {', '.join(BACKENDS)}")
    _check_options(chosen, options)
    device = device or ("cuda" if chosen == "tensorrt" else "cpu")
    preprocess = options.pop("preprocess", None)
    session = _open(chosen, path_or_model_name, device, options)
    if preprocess is not None:
        _replace_preprocess(session, preprocess)
    return session


def _replace_preprocess(session: Session, preprocess: Any) -> None:
    """Record `preprocess` on the session; a uint8 graph's baked-in mean/std cannot be replaced."""
    from pfdeploy.calibration.preprocess import Preprocess

    new = Preprocess.from_dict(preprocess) if isinstance(preprocess, dict) else preprocess
    old = session.preprocess
    if session.input_spec.dtype == "uint8" and old is not None and (old.mean, old.std) != (new.mean, new.std):
        session.close()
        raise PfdeployError(
            f"this uint8 artifact normalizes inside the graph with mean {old.mean} / std {old.std}; a "
            "preprocess with other mean/std cannot apply: re-export it, or use a float-nchw artifact"
        )
    session.metadata["pfdeploy.preprocess"] = json.dumps(new.to_dict(), sort_keys=True)


def _open(backend: str, target: Any, device: str, options: dict[str, Any]) -> Session:
    if backend == "torch":
        from pfdeploy.runtime.torch_backend import torch_session

        return torch_session(target, device=device, **options)
    if not isinstance(target, (str, Path)):
        raise PfdeployError(f"the {backend} backend needs a file path, got {type(target).__name__}")
    if backend == "onnxruntime":
        if Path(str(target)).suffix.lower() != ".onnx":
            raise PfdeployError(f"the onnxruntime backend runs .onnx files, not {target}")
        from pfdeploy.runtime.onnxruntime_backend import OnnxRuntimeSession

        return OnnxRuntimeSession(target, device=device, **options)
    from pfdeploy.runtime.tensorrt_backend import TensorRTSession

    return TensorRTSession(target, device=device, **options)
