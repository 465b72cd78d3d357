"""Deploy options: parsed and validated before any work starts (one clear line per mistake)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfdeploy.choices import CALIB_METHODS, INPUT_FORMATS, INT8_TARGETS, PRECISIONS
from pfdeploy.errors import PfdeployError

log = logging.getLogger(__name__)

ENGINE_MODES = ("auto", "yes", "no")


@dataclass(frozen=True)
class DeployOptions:
    """Everything `deploy` needs, already validated (see `deploy_options`)."""

    model: str
    out: Path
    checkpoint: Path | None = None
    num_classes: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    input_format: str = "float-nchw"  # or "uint8-nhwc": raw pixels in, normalization inside the graph
    precisions: tuple[str, ...] | None = None  # None: fp32,fp16, plus int8 when calib_data is given
    calib_data: Path | None = None
    val_data: Path | None = None
    class_names: tuple[str, ...] | None = None  # the model's outputs by name (--labels, a fixture's classes)
    calib_images: int = 512
    calib_method: str = "entropy"
    int8_target: str = "tensorrt"  # "cpu": the INT8 graph re-encoded for ONNX Runtime's x86 kernels
    int8_max_drop: float | None = None  # accuracy budget (top-1 points on --val-data); None: no budget
    verify_samples: int = 8
    engines: str = "auto"
    openvino: str = "auto"  # OpenVINO variants (int8, bf16): auto = when installed; yes; no
    pt2: str = "auto"  # AOTInductor .pt2 packages: auto = on a CUDA GPU only (steps.pt2_plan); yes; no
    engine_batch: tuple[int, int, int] = (1, 8, 32)
    bench_batches: tuple[int, ...] = (1, 8)
    bench_seconds: float = 1.0
    preprocess: dict[str, Any] | None = None  # replaces the registry's (e.g. a trained fixture's)
    label: str | None = None  # artifact file stem; default: the model name
    force: bool = False

    @property
    def stem(self) -> str:
        """Artifact file stem: `<stem>.fp32.onnx`, `<stem>.int8.plan`, ..."""
        return self.label or self.model

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view, as recorded in report.json."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("out", "checkpoint", "calib_data", "val_data"):
            data[key] = None if data[key] is None else str(data[key])
        return json.loads(json.dumps(data))


def parse_precisions(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'fp32,fp16,int8' -> ('fp32', 'fp16', 'int8') in pipeline order; unknown or empty names raise."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [p.strip().lower() for p in items if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        shown = ", ".join(repr(p) for p in unknown) or "none"
        allowed = ",".join(PRECISIONS)
        raise PfdeployError(f"unknown precision {shown}; use a comma-separated subset of {allowed}")
    return tuple(p for p in PRECISIONS if p in items)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """['layers=[1,1,1,1]', 'base_width=8'] -> {'layers': [1, 1, 1, 1], 'base_width': 8} (JSON values).

    A value that is not JSON stays a string (pooling=max); JSON nesting deeper than MAX_JSON_DEPTH or
    longer than MAX_JSON_BYTES is refused in one line. The values themselves are checked by create_model.
    """
    from pfdeploy.limits import MAX_JSON_BYTES, MAX_JSON_DEPTH, json_depth

    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PfdeployError(f"--override {pair[:80]!r}: write KEY=VALUE, e.g. --override base_width=16")
        if not key.isidentifier():  # also keeps the messages below on one line
            raise PfdeployError(f"--override {key[:40]!r}=...: KEY must be a model argument name such as base_width")
        if key == "num_classes":
            raise PfdeployError("--override num_classes=...: give the classifier size with --num-classes N")
        if len(value) > MAX_JSON_BYTES:
            raise PfdeployError(f"--override {key} is {len(value)} characters, over pfdeploy's JSON limit")
        deep = PfdeployError(f"--override {key} nests deeper than {MAX_JSON_DEPTH} levels; give a flat value "
                             "such as layers=[1,1,1,1]")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value  # a bare string such as pooling=max
        except RecursionError:
            raise deep from None
        if json_depth(parsed) > MAX_JSON_DEPTH:
            raise deep
        result[key] = parsed
    return result


def _check_dir(path: Path | None, what: str, fix: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_dir():
        raise PfdeployError(f"{what} {path} is not a directory; {fix}")
    if not any(path.iterdir()):
        raise PfdeployError(f"{what} {path} is empty; {fix}")
    return path


OUTPUT_FILES = ("{stem}.fp32.onnx", "{stem}.fp16.onnx", "{stem}.int8.onnx", "{stem}.int8-cpu.onnx",
                "{stem}.fp32.pt2", "{stem}.fp16.pt2",
                "{stem}.fp32.plan", "{stem}.fp16.plan", "{stem}.int8.plan", "report.json", "report.md",
                "bench.json", "throughput.png")


def _check_out(out: Path, stem: str, checkpoint: Path | None, force: bool = False) -> Path:
    """--out must be (or can become) a writable folder, and no file deploy writes may be the checkpoint.
    A folder that holds files but no pfdeploy state file is someone else's (deploy would replace their
    report.md, bench.json, ...): refused unless `force` (--force)."""
    from pfdeploy._io import TEMP_SUFFIX, check_output_dir, refuse_overwrite
    from pfdeploy.deploy.state import STATE_FILE

    out = check_output_dir(out, "--out")
    for name in OUTPUT_FILES:
        refuse_overwrite(out / name.format(stem=stem), [checkpoint], "--out file")
    if out.is_dir() and not force and not (out / STATE_FILE).is_file():
        theirs = sorted(p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)))
        if theirs:
            raise PfdeployError(f"--out {out} is not a pfdeploy output folder (no {STATE_FILE}) and holds "
                                f"{len(theirs)} entr{'y' if len(theirs) == 1 else 'ies'} ({theirs[0]!r}"
                                f"{', ...' if len(theirs) > 1 else ''}) that deploy could replace; give an empty or "
                                "new folder, or --force to write there anyway")
    return out


def _bench_batches(opts: DeployOptions, model: str) -> tuple[int, ...]:
    """--bench-batch: at most MAX_BATCH each, and the largest one within the memory available for the
    model's activations (a lower-bound estimate made without weights), checked before any work."""
    from pfdeploy.runtime.bench import check_batches, check_memory, model_bytes_per_image

    batches = check_batches(opts.bench_batches, "--bench-batch", "1,8")
    check_memory(max(batches), model_bytes_per_image(model, opts.overrides), "--bench-batch")
    return batches


def check_options(opts: DeployOptions) -> DeployOptions:
    """Validate every option before any work; returns the options with the model name resolved."""
    from dataclasses import replace

    from pfdeploy.models import resolve_name

    model = resolve_name(opts.model)
    if opts.precisions is None:
        precisions = ("fp32", "fp16", "int8") if opts.calib_data is not None else ("fp32", "fp16")
    else:
        precisions = parse_precisions(opts.precisions)
    if "int8" in precisions and opts.calib_data is None:
        raise PfdeployError("--precision int8 needs calibration images: add --calib-data DIR "
                            "(an image folder, class folders or .npy/.npz), or drop int8")
    calib = _check_dir(opts.calib_data, "--calib-data", "give a folder of calibration images")
    if calib is not None and "int8" not in precisions:
        log.warning("--calib-data is only used for int8, which --precision %s does not include",
                    ",".join(precisions))
    val = _check_dir(opts.val_data, "--val-data", "give a folder of images (class subfolders allowed)")
    if val is not None:  # class folders the accuracy step could not map fail now, not after the export
        from pfdeploy.runtime.predict import check_class_folders

        check_class_folders(val, opts.class_names)
    if opts.checkpoint is not None and not Path(opts.checkpoint).is_file():
        raise PfdeployError(f"--checkpoint {opts.checkpoint} not found; give the .pth file, or omit it for "
                            "random weights")
    if opts.num_classes is not None and opts.num_classes < 1:
        raise PfdeployError(f"--num-classes must be >= 1, got {opts.num_classes}")
    if opts.engines not in ENGINE_MODES:
        raise PfdeployError(f"--engines {opts.engines!r}: use one of {', '.join(ENGINE_MODES)}")
    if opts.openvino not in ENGINE_MODES:
        raise PfdeployError(f"--openvino {opts.openvino!r}: use one of {', '.join(ENGINE_MODES)}")
    if opts.pt2 not in ENGINE_MODES:
        raise PfdeployError(f"--pt2 {opts.pt2!r}: use one of {', '.join(ENGINE_MODES)}")
    if opts.calib_method not in CALIB_METHODS:
        raise PfdeployError(f"--calib-method {opts.calib_method!r}: use one of {', '.join(CALIB_METHODS)}")
    if opts.input_format not in INPUT_FORMATS:
        raise PfdeployError(f"--input-format {opts.input_format!r}: use one of {', '.join(INPUT_FORMATS)}")
    if opts.int8_target not in INT8_TARGETS:
        raise PfdeployError(f"--int8-target {opts.int8_target!r}: use one of {', '.join(INT8_TARGETS)}")
    if opts.int8_target == "cpu" and opts.engines == "yes" and "int8" in precisions:
        raise PfdeployError("--int8-target cpu makes an INT8 graph for ONNX Runtime CPU that TensorRT does not "
                            "compile; use --int8-target tensorrt with --engines yes")
    if opts.int8_max_drop is not None:
        drop = opts.int8_max_drop
        if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not drop >= 0 or drop == float("inf"):
            raise PfdeployError(f"--int8-max-drop must be a number of top-1 points >= 0, got {drop!r}")
        if val is None:
            raise PfdeployError("--int8-max-drop needs --val-data DIR: the images the INT8 graph is judged on "
                                "(class folders: top-1; otherwise top-1 agreement with FP32)")
        if "int8" not in precisions:
            log.warning("--int8-max-drop is only used for int8, which --precision %s does not include",
                        ",".join(precisions))
    if opts.calib_images < 1:
        raise PfdeployError("--calib-images must be >= 1")
    from pfdeploy.limits import MAX_SAMPLES

    if not 1 <= opts.verify_samples <= MAX_SAMPLES:
        raise PfdeployError(f"--verify-samples must be in 1..{MAX_SAMPLES}, got {opts.verify_samples}")
    if opts.bench_seconds <= 0:
        raise PfdeployError(f"--bench-seconds must be > 0, got {opts.bench_seconds}")
    from pfdeploy.engines.profile import check_batch_range

    return replace(
        opts,
        model=model,
        out=_check_out(opts.out, opts.label or model, opts.checkpoint, opts.force),
        checkpoint=None if opts.checkpoint is None else Path(opts.checkpoint),
        precisions=precisions,
        calib_data=calib,
        val_data=val,
        engine_batch=check_batch_range(opts.engine_batch),
        bench_batches=_bench_batches(opts, model),
    )


def options_for_fixture(name: str, out: Path, **changes: Any) -> DeployOptions:
    """DeployOptions for a trained fixture of `tests/fixtures/trained/fixtures.json`: its model,
    classes, overrides, checkpoint and preprocessing; its calib/val images unless given."""
    from pfdeploy.calibration.fixtures import get_fixture

    fixture = get_fixture(name)
    base = dict(
        model=fixture.model, out=Path(out), checkpoint=fixture.checkpoint, num_classes=fixture.num_classes,
        overrides=dict(fixture.overrides), calib_data=fixture.calib_dir, val_data=fixture.val_dir,
        class_names=tuple(fixture.classes) or None, preprocess=fixture.preprocess.to_dict(), label=fixture.name,
    )
    base.update({k: v for k, v in changes.items() if v is not None})
    return DeployOptions(**base)
