"""PyTorch model -> ONNX graph with the torch.export-based exporter (dynamic batch, metadata).

The exporter is `torch.onnx.export(..., dynamo=True)`, the default since torch 2.9 (the
TorchScript exporter is deprecated). It emits opset 18 or newer, with LayerNormalization as one
op, and runs onnxscript's optimizer (constant folding, dead-code removal) on the result. Every
file is checked with `onnx.checker` (full shape inference) before it is atomically written.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from pfdeploy._io import atomic_path, check_output_file, refuse_overwrite, sha256_file
from pfdeploy.calibration.preprocess import Preprocess
from pfdeploy.choices import EXPORT_PRECISIONS, INPUT_FORMATS
from pfdeploy.errors import PfdeployError
from pfdeploy.export.metadata import PREFIX, RANDOM, metadata_for, set_metadata
from pfdeploy.export.preprocess import sample_input, wrap_input_format
from pfdeploy.limits import MAX_BATCH

log = logging.getLogger(__name__)

MIN_OPSET, DEFAULT_OPSET, MAX_OPSET = 18, 20, 23
RANDOM_SEED = 0
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def resolve_model(model_or_name: nn.Module | str, checkpoint: str | Path | None, num_classes: int | None,
                  overrides: dict[str, Any] | None, img_size: int | None) -> tuple[nn.Module, str | None]:
    """The model to export and its random seed (None when the weights are not seeded random ones)."""
    from pfdeploy.models import create_model, get_config, load_checkpoint

    seed = None
    if isinstance(model_or_name, str):
        cfg = get_config(model_or_name)
        overrides = dict(overrides or {})
        if img_size is not None:
            overrides["img_size"] = img_size
        classes = num_classes if num_classes is not None else cfg.num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = create_model(cfg.name, num_classes=classes, **overrides)
        seed = None if checkpoint else str(RANDOM_SEED)
    else:
        model = model_or_name
        if getattr(model, "pretrained_cfg", None) is None:
            raise PfdeployError("onnx_from_model needs a registered model (from pfdeploy.models.create_model)")
        if overrides or num_classes is not None:
            raise PfdeployError("num_classes/overrides apply to a model name, not to a model object")
        if img_size is not None and img_size != model.img_size:
            raise PfdeployError(f"img_size {img_size} differs from the model's {model.img_size}; "
                                "create the model with img_size=... instead")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval(), seed


def check_and_save(model: onnx.ModelProto, output: str | Path) -> Path:
    """Run the full ONNX checker (with shape inference) and write `model` atomically."""
    output = Path(output)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"exported graph failed onnx.checker: {exc}") from exc
    with atomic_path(output) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return output


NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx")
# Warnings raised inside the exporter's own modules (its deprecations and pass-by-pass notes) ...
EXPORTER_MODULES = r"(torch\.onnx|torch\.export|torch\._export|torch\._dynamo|torch\.fx|onnxscript|onnx_ir)(\.|$)"
# ... and ones it triggers elsewhere on every export, attributed to other modules (torch 2.10+'s
# pytree deprecation is reported from copyreg). Anything else, e.g. a warning from the model's own
# forward, reaches the user.
EXPORTER_MESSAGES = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
EXPORTER_WARNINGS = (FutureWarning, DeprecationWarning, UserWarning)


@contextlib.contextmanager
def _quiet_exporter():
    """Keep the exporter's pass-by-pass INFO logs and its own known warnings out of the user's view."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for category in EXPORTER_WARNINGS:
            warnings.filterwarnings("ignore", category=category, module=EXPORTER_MODULES)
            for message in EXPORTER_MESSAGES:
                warnings.filterwarnings("ignore", message=message, category=category)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def torch_to_onnx(module: nn.Module, example: torch.Tensor, *, dynamic: bool, opset: int) -> onnx.ModelProto:
    """Export `module` (one input, one output) with the dynamo exporter; optimized ModelProto."""
    dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}} if dynamic else None
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, optimize=True,
            external_data=False, verbose=False,
        )
    model = program.model_proto
    got = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if got != opset:
        raise PfdeployError(f"the exporter produced opset {got}, not {opset}; use --opset {got}")
    return model


def _check_args(batch: str | int, opset: int, precision: str, input_format: str) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise PfdeployError(
            f"opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET} (the torch.export-based "
            f"exporter emits opset >= {MIN_OPSET}; 20+ writes GELU as one Gelu op)"
        )
    if precision not in EXPORT_PRECISIONS:
        raise PfdeployError(f"precision {precision!r} is not exported here; use fp32 or fp16 "
                            "(INT8: `pfdeploy quantize` on the fp32 graph)")
    if input_format not in INPUT_FORMATS:
        raise PfdeployError(f"unknown input format {input_format!r}; use one of {', '.join(INPUT_FORMATS)}")
    if batch != "dynamic" and not (isinstance(batch, int) and 1 <= batch <= MAX_BATCH):
        raise PfdeployError(f"batch must be 'dynamic' or an integer 1..{MAX_BATCH}, got {batch!r}")


def onnx_from_model(
    model_or_name: nn.Module | str,
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    batch: str | int = "dynamic",
    img_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    input_format: str = "float-nchw",
    num_classes: int | None = None,
    overrides: dict[str, Any] | None = None,
    keep_io_types: bool = True,
    preprocess: Preprocess | None = None,
) -> Path:
    """Export a registered model (name or module) to ONNX at `output` and return the path.

    Input `input` (float NCHW, or uint8 NHWC with normalization in the graph), output `logits`,
    batch dynamic or fixed. Without `checkpoint`, a model given by name gets seeded random weights
    (stated in a warning and in `pfdeploy.checkpoint_sha256 = random`). `precision='fp16'` computes
    in FP16 with overflow-prone ops kept FP32; `keep_io_types` keeps FP32 input/output.
    `preprocess` replaces the registered model's preprocessing (e.g. for a model trained on other
    data); its size must equal the model's input size.
    """
    from pfdeploy.calibration.preprocess import preprocess_for
    from pfdeploy.models import parameter_free_layers

    _check_args(batch, opset, precision, input_format)
    check_output_file(output, "output")  # before minutes of export, not after
    refuse_overwrite(output, [checkpoint], "output")
    model, seed = resolve_model(model_or_name, checkpoint, num_classes, overrides, img_size)
    cfg = model.pretrained_cfg
    if checkpoint is None and seed is not None:
        log.warning("WARNING: no --checkpoint given: %s is exported with RANDOM weights; its outputs "
                    "are meaningless (metadata records checkpoint_sha256=random)", cfg.name)
    elif checkpoint is None:
        log.warning("WARNING: %s is exported with the weights of the given module, which no checkpoint "
                    "file records (checkpoint_sha256=random); `verify` will need them saved as a "
                    "checkpoint", cfg.name)
    pre: Preprocess = preprocess or preprocess_for(cfg.name, model.img_size)
    if pre.size != model.img_size:
        raise PfdeployError(f"preprocess size {pre.size} differs from the model's input size {model.img_size}")
    module = wrap_input_format(model, input_format, pre)
    example = sample_input(input_format, 2 if batch == "dynamic" else batch, model.img_size)
    with torch.no_grad():
        classes = int(module(example).shape[-1])
    log.info("exporting %s (%s, batch %s, opset %d)", cfg.name, input_format, batch, opset)
    proto = torch_to_onnx(module, example, dynamic=batch == "dynamic", opset=opset)
    extra = {"random_seed": seed} if seed is not None else {}
    if precision == "fp16":
        extra["fp16_io"] = "fp32" if keep_io_types else "fp16"
    meta = metadata_for(
        model=cfg.name, num_classes=classes, overrides=getattr(model, "overrides", {}),
        checkpoint_sha256=sha256_file(checkpoint) if checkpoint else RANDOM,
        preprocess=pre.to_dict(), input_format=input_format, precision=precision, opset=opset,
        pf_layers=len(parameter_free_layers(model)), batch=batch, **extra,
    )
    if precision == "fp16":
        from pfdeploy.export.fp16 import FP32_OPS, fp16_model

        proto = fp16_model(proto, keep_io_types=keep_io_types)
        meta[PREFIX + "fp16_fp32_ops"] = ",".join(FP32_OPS)
    proto.producer_name, proto.producer_version = "pfdeploy", meta[PREFIX + "version"]
    proto.doc_string = f"{cfg.paper_name} exported by pfdeploy"
    set_metadata(proto, meta)
    path = check_and_save(proto, output)
    log.info("wrote %s", path)
    return path
