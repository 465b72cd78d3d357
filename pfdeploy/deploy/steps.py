"""The deploy steps, each a thin keyed call of another stage's public function.

export -> fp16 -> int8 -> verify -> engines -> bench. Every function takes the StepState and
returns what the report records; the work itself lives in export/, calibration/, engines/, runtime/.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pfdeploy import __version__
from pfdeploy.deploy.options import DeployOptions
from pfdeploy.deploy.state import StepState, fingerprint_dir
from pfdeploy.errors import MissingDependencyError

log = logging.getLogger(__name__)


def artifact_path(opts: DeployOptions, precision: str, suffix: str = ".onnx") -> Path:
    """`<out>/<stem>.<precision>.onnx` (or `.plan`); `<stem>.int8-cpu.onnx` for the CPU INT8 graph."""
    if precision == "int8" and opts.int8_target == "cpu":
        precision = "int8-cpu"
    return opts.out / f"{opts.stem}.{precision}{suffix}"


def export_fp32(state: StepState, opts: DeployOptions, checkpoint_sha: str) -> dict:
    """PyTorch -> `<stem>.fp32.onnx` with pfdeploy.export.onnx_from_model."""
    from pfdeploy.export import onnx_from_model

    out = artifact_path(opts, "fp32")
    inputs = {"model": opts.model, "num_classes": opts.num_classes, "overrides": opts.overrides,
              "checkpoint_sha256": checkpoint_sha, "preprocess": opts.preprocess,
              "input_format": opts.input_format, "version": __version__}

    def run() -> dict:
        from pfdeploy.calibration.preprocess import Preprocess

        # The checkpoint's own preprocessing (a fixture's) replaces the registry's in the metadata and,
        # for uint8-nhwc graphs, in the in-graph normalization. onnx_from_model writes atomically.
        pre = None if opts.preprocess is None else Preprocess.from_dict(opts.preprocess)
        onnx_from_model(opts.model, out, checkpoint=opts.checkpoint, num_classes=opts.num_classes,
                        overrides=opts.overrides or None, input_format=opts.input_format, preprocess=pre)
        return {}

    return state.run("export fp32", inputs, [out], run) | {"path": out}


def fp16_graph(state: StepState, opts: DeployOptions, fp32: Path) -> dict:
    """`<stem>.fp32.onnx` -> `<stem>.fp16.onnx` with pfdeploy.export.fp16_from_onnx (FP32 IO kept)."""
    from pfdeploy.export import fp16_from_onnx

    out = artifact_path(opts, "fp16")
    inputs = {"fp32_sha256": state.output_sha("export fp32", fp32), "version": __version__}
    step = state.run("convert fp16", inputs, [out], lambda: {"path": str(fp16_from_onnx(fp32, out))})
    return step | {"path": out}


def int8_graph(state: StepState, opts: DeployOptions, fp32: Path) -> dict:
    """`<stem>.fp32.onnx` + calibration images -> `<stem>.int8.onnx` (Q/DQ) with int8_from_onnx: equalized,
    within `--int8-max-drop` on --val-data when given, and with its sensitivity analysis beside it
    (`<stem>.int8.sensitivity.json/.png`) when it fails verify's INT8 tolerances against FP32 there."""
    from pfdeploy.calibration import int8_from_onnx
    from pfdeploy.calibration.quantize import sensitivity_paths

    out = artifact_path(opts, "int8")
    inputs = {"fp32_sha256": state.output_sha("export fp32", fp32), "calib": fingerprint_dir(opts.calib_data),
              "num_images": opts.calib_images, "method": opts.calib_method, "target": opts.int8_target,
              "equalize": True, "max_drop": opts.int8_max_drop, "judged_on": fingerprint_dir(opts.val_data),
              "analyze": "if-failing", "version": __version__}

    def run() -> dict:
        int8_from_onnx(fp32, opts.calib_data, out, num_images=opts.calib_images, method=opts.calib_method,
                       cache_dir=opts.out / ".cache", target=opts.int8_target, val_data=opts.val_data,
                       max_drop=opts.int8_max_drop, analyze="if-failing")
        return {}

    return state.run("quantize int8", inputs, [out, *sensitivity_paths(out)], run) | {"path": out}


PT2_PRECISIONS = ("fp32", "fp16")


def pt2_plan(mode: str, precisions: tuple[str, ...], cuda: bool, toolchain: str | None = None) -> dict:
    """Which .pt2 packages deploy compiles: {"device", "precisions", "note", "skipped"} (pure).

    auto: on a CUDA GPU only, for the requested fp32/fp16 (the compiled path is a GPU speed path; on a
    CPU deploy already serves ONNX Runtime and OpenVINO, and an AOTInductor CPU build of a full-size
    model takes minutes). yes: also on the CPU, fp32 only (fp16 packages are compiled for CUDA). no: none.
    `toolchain`: why AOTInductor cannot build here (pfdeploy.export.pt2.pt2_toolchain_problem), or None;
    auto then skips the packages with that reason, yes refuses in one line before any work.
    """
    wanted = tuple(p for p in precisions if p in PT2_PRECISIONS)
    if mode == "no":
        return {"device": None, "precisions": [], "note": "not requested (--pt2 no)", "skipped": []}
    if mode == "auto" and not cuda:
        return {"device": None, "precisions": [], "skipped": [],
                "note": "no CUDA GPU: --pt2 auto compiles packages on GPU machines only (--pt2 yes for the CPU)"}
    device = "cuda" if cuda else "cpu"
    chosen = [p for p in wanted if device == "cuda" or p == "fp32"]
    skipped = [{"precision": p, "reason": "fp16 .pt2 packages are compiled for CUDA"} for p in wanted
               if p not in chosen]
    if chosen and toolchain:
        if mode == "yes":
            raise MissingDependencyError(f"--pt2 yes: {toolchain}")
        return {"device": None, "precisions": [], "note": f"no .pt2 packages: {toolchain}",
                "skipped": skipped + [{"precision": p, "reason": toolchain} for p in chosen]}
    return {"device": device, "precisions": chosen, "skipped": skipped,
            "note": f"AOTInductor packages for {device}" if chosen else "no fp32/fp16 precision requested"}


def pt2_package(state: StepState, opts: DeployOptions, precision: str, device: str, checkpoint_sha: str) -> dict:
    """PyTorch -> `<stem>.<precision>.pt2` with pfdeploy.export.pt2.pt2_from_model (keyed on the model, the
    device it is compiled for and the torch that compiles it)."""
    import torch

    from pfdeploy._cpu import cpu_summary
    from pfdeploy.export.pt2 import pt2_from_model

    out = artifact_path(opts, precision, ".pt2")
    target = torch.cuda.get_device_name() if device == "cuda" else cpu_summary()  # what it is compiled for
    inputs = {"model": opts.model, "num_classes": opts.num_classes, "overrides": opts.overrides,
              "checkpoint_sha256": checkpoint_sha, "preprocess": opts.preprocess, "input_format": opts.input_format,
              "precision": precision, "device": device, "target": target, "torch": torch.__version__,
              "version": __version__}

    def run() -> dict:
        from pfdeploy.calibration.preprocess import Preprocess

        pre = None if opts.preprocess is None else Preprocess.from_dict(opts.preprocess)
        pt2_from_model(opts.model, out, checkpoint=opts.checkpoint, num_classes=opts.num_classes,
                       overrides=opts.overrides or None, input_format=opts.input_format, preprocess=pre,
                       precision=precision, device=device)
        return {}

    return state.run(f"export pt2 {precision}", inputs, [out], run) | {"path": out}


def tensorrt_check(opts: DeployOptions, path: Path, precision: str) -> dict:
    """pfdeploy.engines.trt_check.check_trt on a graph meant for TensorRT (all but the --int8-target cpu
    graph): its violations of TensorRT's documented ONNX support. Not keyed: it takes well under a second."""
    if precision == "int8" and opts.int8_target == "cpu":
        return {"checked": False, "why": "the --int8-target cpu graph is for ONNX Runtime, not TensorRT"}
    from pfdeploy.engines.trt_check import check_trt

    report = check_trt(path).to_dict()
    return {"checked": True, **{k: report[k] for k in ("trt_version", "source", "passed", "violations")}}


def verify_onnx(state: StepState, opts: DeployOptions, path: Path, sha: str, checkpoint_sha: str,
                backend: str = "onnxruntime", precision: str | None = None, label: str | None = None) -> dict:
    """verify_artifact (ONNX Runtime, or OpenVINO computing `precision`, vs PyTorch on noise,
    real-looking and --val-data images); `label` names the step (default: the file name)."""
    from pfdeploy.runtime.verify import verify_artifact

    inputs = {"sha256": sha, "checkpoint": checkpoint_sha, "data": fingerprint_dir(opts.val_data),
              "samples": opts.verify_samples, "version": __version__}
    if backend != "onnxruntime":
        inputs.update(backend=backend, precision=precision)

    def run() -> dict:
        return verify_artifact(path, checkpoint=opts.checkpoint, samples=opts.verify_samples,
                               data=opts.val_data, backend=backend, precision=precision).to_dict()

    return state.run(f"verify {label or path.name}", inputs, [], run)


def has_class_folders(path: Path | None) -> bool:
    """True for an ImageNet-style folder (DIR/<class>/<image>), whose labels give an accuracy."""
    return path is not None and any(p.is_dir() for p in Path(path).iterdir())


def accuracy(state: StepState, opts: DeployOptions, path: Path, sha: str, checkpoint_sha: str,
             backend: str = "auto", precision: str | None = None, label: str | None = None) -> dict:
    """Top-1/top-5 on the labelled --val-data with pfdeploy.runtime.predict.evaluate.

    backend "torch" on the fp32 ONNX evaluates the PyTorch model it was exported from (the reference);
    `precision` is the openvino backend's compute precision; `label` names the step (default: the file).
    """
    from pfdeploy.runtime.predict import evaluate

    inputs = {"sha256": sha, "checkpoint": checkpoint_sha, "data": fingerprint_dir(opts.val_data),
              "backend": backend, "version": __version__}
    if opts.class_names is not None:
        inputs["classes"] = list(opts.class_names)
    options = {"checkpoint": opts.checkpoint} if backend == "torch" and opts.checkpoint else {}
    if backend == "torch":
        options["fold_bn"] = False  # the reference: the model as trained, not the torch backend's speed path
    if precision is not None:
        inputs["precision"] = options["precision"] = precision
    name = "accuracy pytorch" if backend == "torch" else f"accuracy {label or path.name}"

    def run() -> dict:
        result = evaluate(path, opts.val_data, backend=backend, progress=False, labels=opts.class_names, **options)
        return {k: result[k] for k in ("images", "classes", "top1", "top5", "backend")}

    return state.run(name, inputs, [], run)


def engine_environment(mode: str) -> tuple[dict | None, str]:
    """(TensorRT/GPU environment or None, a sentence for the report). `yes` raises when absent."""
    if mode == "no":
        return None, "not requested (--engines no)"
    from pfdeploy.engines.environment import current_environment

    try:
        env = current_environment()
    except MissingDependencyError as exc:
        if mode == "yes":
            raise
        return None, str(exc)
    return env, f"built with TensorRT {env.get('tensorrt_version')} on {env.get('gpu_name')}"


def build_engine(state: StepState, opts: DeployOptions, onnx_path: Path, precision: str) -> dict:
    """engine_from_onnx (it keys and reuses engines itself, on ONNX sha256, options, GPU and TensorRT)."""
    from pfdeploy.engines import engine_from_onnx

    result = engine_from_onnx(onnx_path, artifact_path(opts, precision, ".plan"), batch=opts.engine_batch,
                              force=opts.force)  # deploy --force redoes everything, engines included
    seconds = None if result.reused else result.manifest.get("build_seconds")
    state.record(f"engine {result.path.name}", result.reused, seconds)
    return {"path": result.path, "reused": result.reused, "seconds": result.manifest.get("build_seconds")}


def verify_engine(opts: DeployOptions, plan: Path, onnx_path: Path, precision: str) -> dict:
    """Engine vs the ONNX graph it was compiled from (itself verified against PyTorch), on the same inputs
    as `verify`: noise, real-looking images and the --val-data images when given. INT8 is judged on the
    --val-data images when there are some, as the ONNX graphs are (runtime.verify.judged_sources)."""
    import numpy as np

    from pfdeploy.calibration.preprocess import normalize_uint8
    from pfdeploy.runtime import load
    from pfdeploy.runtime.verify import (
        _run_in_batches,
        compare_logits,
        folder_images,
        judged_sources,
        random_images,
        smooth_images,
    )

    with load(onnx_path, backend="onnxruntime") as reference, load(plan, device="cuda") as engine:
        spec, pre = engine.input_spec, reference.preprocess
        low, _, high = opts.engine_batch
        batch, count = min(max(low, 8), high), opts.verify_samples
        images = {"random": random_images(count, spec.image_size, 0),
                  "real-looking": smooth_images(count, spec.image_size, 1)}
        if opts.val_data is not None:
            images["data"] = folder_images(opts.val_data, pre, count)
        sources = {}
        for name, pixels in images.items():
            x = pixels if spec.dtype == "uint8" else normalize_uint8(pixels, pre).astype(spec.dtype)
            got = _run_in_batches(lambda b: np.asarray(engine(b)), x, batch)
            sources[name] = compare_logits(_run_in_batches(reference, x, batch), got, precision)
    judged = judged_sources(precision, sources)
    return {"reference": onnx_path.name, "reference_kind": "the ONNX graph it was compiled from (itself verified "
            "against PyTorch)", "sources": sources, "judged_on": judged,
            "passed": all(sources[name]["passed"] for name in judged)}
