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
    """`<stem>.fp32.onnx` + calibration images -> `<stem>.int8.onnx` (Q/DQ) with int8_from_onnx."""
    from pfdeploy.calibration import int8_from_onnx

    out = artifact_path(opts, "int8")
    inputs = {"fp32_sha256": state.output_sha("export fp32", fp32), "calib": fingerprint_dir(opts.calib_data),
              "num_images": opts.calib_images, "method": opts.calib_method, "target": opts.int8_target,
              "version": __version__}

    def run() -> dict:
        int8_from_onnx(fp32, opts.calib_data, out, num_images=opts.calib_images, method=opts.calib_method,
                       cache_dir=opts.out / ".cache", target=opts.int8_target)
        return {}

    return state.run("quantize int8", inputs, [out], run) | {"path": out}


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
    options = {"checkpoint": opts.checkpoint} if backend == "torch" and opts.checkpoint else {}
    if precision is not None:
        inputs["precision"] = options["precision"] = precision
    name = "accuracy pytorch" if backend == "torch" else f"accuracy {label or path.name}"

    def run() -> dict:
        result = evaluate(path, opts.val_data, backend=backend, progress=False, **options)
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
