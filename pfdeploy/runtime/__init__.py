"""runtime stage: one Session API over torch, onnxruntime, openvino and tensorrt, plus timing and benchmarks.

    from pfdeploy.runtime import load
    with load("r50_hybrid.onnx") as session:          # backend chosen from the artifact
        logits = session(batch)                       # NumPy (or torch) in, float32 NumPy logits out

Backends are imported only when used, so `import pfdeploy.runtime` needs neither onnxruntime nor
OpenVINO nor TensorRT. See `pfdeploy.runtime.session` for the thread-safety of each backend.

`backend="auto"` (`backend_for`, a pure function of the file name and `AutoFacts`):
model names and modules -> torch; .plan/.engine -> tensorrt; .pt2 -> pt2 (AOTInductor packages from
`pfdeploy export --format pt2`, on the device they were compiled for); an .onnx file -> onnxruntime, except
- `precision="bf16"` asked -> openvino (the only backend computing BF16);
- an INT8 Q/DQ graph on the CPU with OpenVINO installed -> openvino when the CPU has VNNI (any
  model), or when the model is a ResNet (family "resnet") on a CPU without VNNI.
Measured (docs/benchmarks.md, "Backend choice for auto"; AMD EPYC, AVX2 only, batch 8, interleaved,
img/s over ONNX Runtime FP32, four runs): r50_hybrid's INT8 graph 1.84-1.99x on OpenVINO and
0.55-0.58x on ONNX Runtime; its `--target cpu` graph 1.98-2.12x on OpenVINO and 1.86-2.04x on ONNX
Runtime (OpenVINO ahead in three runs of four); vit_s_max's INT8 graphs 0.80-0.85x on OpenVINO
(without VNNI its INT8 matrix products are slower than FP32) and 1.48-1.60x on ONNX Runtime; FP32
graphs 0.87-0.98x on OpenVINO. On an Intel Xeon with AMX and AVX512-VNNI (the lent H200 machine's
CPU, batch 8) OpenVINO ran the INT8 graph at 4.2-4.3x of ONNX Runtime FP32 for r50 and r50_hybrid
(ONNX Runtime: 0.21-0.30x) and 3.4x for vit_s_max (ONNX Runtime: 1.7x); BF16 2.1-3.2x.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfdeploy.errors import PfdeployError
from pfdeploy.runtime.session import InputSpec, Session

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt", "pt2")
ENGINE_SUFFIXES = (".plan", ".engine")
PT2_SUFFIX = ".pt2"
OPTIONS = {
    "torch": {"checkpoint", "num_classes", "overrides", "precision", "channels_last", "compile",
              "cuda_graph", "input_format", "tf32", "fold_bn", "fused"},
    "onnxruntime": {"intra_op_threads", "providers"},
    "openvino": {"precision", "intra_op_threads"},
    "tensorrt": {"cuda_graph"},
    "pt2": {"cuda_graph"},
}
#: The compute precisions a backend's `precision` option takes (the others run the artifact's own).
BACKEND_PRECISIONS = {"torch": ("fp32", "fp16"), "openvino": ("fp32", "bf16")}

#: Model families whose INT8 graphs OpenVINO runs faster than ONNX Runtime on CPUs without VNNI.
OPENVINO_INT8_FAMILIES_WITHOUT_VNNI = ("resnet",)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")

__all__ = ["BACKENDS", "AutoFacts", "InputSpec", "Session", "auto_facts", "backend_for", "load"]


@dataclass(frozen=True)
class AutoFacts:
    """What `backend_for` weighs beyond the file name (gathered by `auto_facts`; defaults: unknown)."""

    precision: str | None = None  # the graph's precision: fp32, fp16, int8 (None: unknown)
    family: str | None = None  # model family from the metadata: resnet, vit, pit (None: unknown)
    device: str = "cpu"
    openvino: bool = False  # OpenVINO is installed
    vnni: bool = False  # the CPU has an 8-bit dot-product instruction (pfdeploy._cpu.has_vnni)
    bf16: bool = False  # precision="bf16" was asked for


def backend_for(target: Any, facts: AutoFacts | None = None) -> str:
    """The backend `load(target, backend="auto")` picks (the rule is in this module's docstring).

    Pure: by file suffix, else torch for a model name; for an .onnx file `facts` decide between
    onnxruntime and openvino.
    """
    if not isinstance(target, (str, Path)):
        return "torch"  # an nn.Module
    suffix = Path(str(target)).suffix.lower()
    if suffix == ".onnx":
        return _onnx_backend(facts or AutoFacts())
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix == PT2_SUFFIX:
        return "pt2"
    from pfdeploy.models import list_models, resolve_name

    try:
        resolve_name(str(target))
    except PfdeployError:
        raise PfdeployError(
            f"{target!r} is neither an artifact (.onnx, .plan, .engine, .pt2) nor a registered model "
            f"({', '.join(list_models())})"
        ) from None
    return "torch"


def _onnx_backend(facts: AutoFacts) -> str:
    if facts.device != "cpu":
        return "onnxruntime"  # onnxruntime-gpu's execution providers
    if facts.bf16:
        return "openvino"
    fast_int8 = facts.vnni or facts.family in OPENVINO_INT8_FAMILIES_WITHOUT_VNNI
    if facts.precision == "int8" and facts.openvino and fast_int8:
        return "openvino"
    return "onnxruntime"


def auto_facts(path: str | Path, device: str | None = None, options: dict[str, Any] | None = None) -> AutoFacts:
    """Gather the AutoFacts of an .onnx file on this machine: its precision and model family (metadata,
    else Q/DQ ops in the graph), whether OpenVINO is installed, and the CPU's VNNI."""
    import importlib.util

    from pfdeploy._cpu import has_vnni
    from pfdeploy._onnxfile import load_onnx
    from pfdeploy.models import get_config, list_models

    model = load_onnx(path, external_data=False, check_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    precision = meta.get("pfdeploy.precision")
    if precision is None and any(node.op_type in QDQ_OPS for node in model.graph.node):
        precision = "int8"
    name = meta.get("pfdeploy.model")
    family = get_config(name).family if name in list_models() else None
    return AutoFacts(precision=precision, family=family, device=device or "cpu",
                     openvino=importlib.util.find_spec("openvino") is not None, vnni=has_vnni(),
                     bf16=(options or {}).get("precision") == "bf16")


def _check_options(backend: str, options: dict[str, Any]) -> None:
    if "precision" in options:
        allowed = BACKEND_PRECISIONS.get(backend)
        choices = "; ".join(f"{b}: {', '.join(p)}" for b, p in BACKEND_PRECISIONS.items())
        if allowed is None:
            raise PfdeployError(f"the {backend} backend runs the artifact's own precision; drop precision "
                                f"{options['precision']!r} or choose a backend that computes one ({choices})")
        if options["precision"] not in allowed:
            raise PfdeployError(f"precision {options['precision']!r} is not one the {backend} backend computes "
                                f"({', '.join(allowed)}); {choices}")
    unknown = sorted(set(options) - OPTIONS[backend] - {"preprocess"})
    if unknown:
        raise PfdeployError(
            f"unknown option(s) {', '.join(unknown)} for the {backend} backend; it accepts: "
            f"{', '.join(sorted(OPTIONS[backend] | {'preprocess'}))}"
        )


def load(path_or_model_name: Any, backend: str = "auto", device: str | None = None, **options: Any) -> Session:
    """Open a Session on an ONNX file, a TensorRT engine, a registered model name or a pfdeploy model.

    backend: "auto" (.onnx -> onnxruntime, or openvino for INT8 graphs where it is faster and
    for precision="bf16": see `backend_for`; .plan/.engine -> tensorrt; model name -> torch),
    or one of BACKENDS ("torch" on an .onnx file rebuilds the exported PyTorch model from its
    metadata). device: "cpu" or "cuda" (default: "cuda" for a TensorRT engine, the compiled-for device for a
    .pt2 package, else "cpu"). Options by backend:
    torch: checkpoint, num_classes, overrides, precision ("fp32"/"fp16"), channels_last (None: on for CNNs
    on CUDA), compile (False/True/"default"/"reduce-overhead"/"max-autotune"/"max-autotune-no-cudagraphs";
    True: max-autotune on CUDA, default on the CPU), cuda_graph, input_format, tf32 (let FP32 on CUDA
    use TF32; off by default), fold_bn (fold BatchNorm into the convolutions; default True), fused
    (CUDA: the PF layers through pfdeploy's Triton kernel; see pfdeploy.runtime.torch_backend);
    pt2: cuda_graph;
    onnxruntime: intra_op_threads, providers; openvino: precision ("fp32"/"bf16"), intra_op_threads;
    tensorrt: cuda_graph.
    Every backend: preprocess (a Preprocess or its dict) replaces the artifact's recorded one.
    Unknown options raise rather than being ignored.
    """
    if backend == "auto":
        onnx_file = isinstance(path_or_model_name, (str, Path)) and str(path_or_model_name).lower().endswith(".onnx")
        if onnx_file and set(options) - OPTIONS["onnxruntime"] - OPTIONS["openvino"] - {"preprocess"}:
            _check_options("onnxruntime", options)  # an option neither .onnx backend takes: say so before reading
        facts = auto_facts(path_or_model_name, device, options) if onnx_file else None
        chosen = backend_for(path_or_model_name, facts)
    else:
        chosen = backend
    if chosen not in BACKENDS:
        raise PfdeployError(f"unknown backend {backend!r}; use auto or one of {', '.join(BACKENDS)}")
    _check_options(chosen, options)
    if chosen != "pt2":  # a .pt2 package defaults to the device it was compiled for
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
    try:
        old = session.preprocess
    except PfdeployError:  # unreadable recorded preprocessing: the one given replaces it
        old = None
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
    if backend == "pt2":
        from pfdeploy.runtime.pt2_backend import pt2_session

        return pt2_session(target, device=device, **options)
    if backend == "openvino":
        from pfdeploy.runtime.openvino_backend import OpenVinoSession

        return OpenVinoSession(target, device=device, **options)
    from pfdeploy.runtime.tensorrt_backend import TensorRTSession

    return TensorRTSession(target, device=device, **options)
