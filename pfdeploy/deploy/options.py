"""Deploy options: parsed and validated before any work starts (one clear line per mistake)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfdeploy._text import positive_ints
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
    calib_images: int = 512
    calib_method: str = "entropy"
    int8_target: str = "tensorrt"  # "cpu": the INT8 graph re-encoded for ONNX Runtime's x86 kernels
    verify_samples: int = 8
    engines: str = "auto"
    openvino: str = "auto"  # OpenVINO variants (int8, bf16): auto = when installed; yes; no
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
    """['layers=[1,1,1,1]', 'base_width=8'] -> {'layers': [1, 1, 1, 1], 'base_width': 8} (JSON values)."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PfdeployError(f"--override {pair!r}: write KEY=VALUE, e.g. --override base_width=16")
        try:
            result[key.strip()] = json.loads(value)
        except ValueError:
            result[key.strip()] = value  # a bare string such as pooling=max
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
                "{stem}.fp32.plan", "{stem}.fp16.plan", "{stem}.int8.plan", "report.json", "report.md",
                "bench.json", "throughput.png")


def _check_out(out: Path, stem: str, checkpoint: Path | None) -> Path:
    """--out must be (or can become) a writable folder, and no file deploy writes may be the checkpoint."""
    from pfdeploy._io import check_output_dir, refuse_overwrite

    out = check_output_dir(out, "--out")
    for name in OUTPUT_FILES:
        refuse_overwrite(out / name.format(stem=stem), [checkpoint], "--out file")
    return out


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
    if opts.checkpoint is not None and not Path(opts.checkpoint).is_file():
        raise PfdeployError(f"--checkpoint {opts.checkpoint} not found; give the .pth file, or omit it for "
                            "random weights")
    if opts.num_classes is not None and opts.num_classes < 1:
        raise PfdeployError(f"--num-classes must be >= 1, got {opts.num_classes}")
    if opts.engines not in ENGINE_MODES:
        raise PfdeployError(f"--engines {opts.engines!r}: use one of {', '.join(ENGINE_MODES)}")
    if opts.openvino not in ENGINE_MODES:
        raise PfdeployError(f"--openvino {opts.openvino!r}: use one of {', '.join(ENGINE_MODES)}")
    if opts.calib_method not in CALIB_METHODS:
        raise PfdeployError(f"--calib-method {opts.calib_method!r}: use one of {', '.join(CALIB_METHODS)}")
    if opts.input_format not in INPUT_FORMATS:
        raise PfdeployError(f"--input-format {opts.input_format!r}: use one of {', '.join(INPUT_FORMATS)}")
    if opts.int8_target not in INT8_TARGETS:
        raise PfdeployError(f"--int8-target {opts.int8_target!r}: use one of {', '.join(INT8_TARGETS)}")
    if opts.int8_target == "cpu" and opts.engines == "yes" and "int8" in precisions:
        raise PfdeployError("--int8-target cpu makes an INT8 graph for ONNX Runtime CPU that TensorRT does not "
                            "compile; use --int8-target tensorrt with --engines yes")
    if opts.calib_images < 1 or opts.verify_samples < 1:
        raise PfdeployError("--calib-images and --verify-samples must be >= 1")
    if opts.bench_seconds <= 0:
        raise PfdeployError(f"--bench-seconds must be > 0, got {opts.bench_seconds}")
    from pfdeploy.engines.profile import check_batch_range

    return replace(
        opts,
        model=model,
        out=_check_out(opts.out, opts.label or model, opts.checkpoint),
        checkpoint=None if opts.checkpoint is None else Path(opts.checkpoint),
        precisions=precisions,
        calib_data=calib,
        val_data=val,
        engine_batch=check_batch_range(opts.engine_batch),
        bench_batches=positive_ints(opts.bench_batches, "--bench-batch", "1,8"),
    )


def options_for_fixture(name: str, out: Path, **changes: Any) -> DeployOptions:
    """DeployOptions for a trained fixture of `tests/fixtures/trained/fixtures.json`: its model,
    classes, overrides, checkpoint and preprocessing; its calib/val images unless given."""
    from pfdeploy.calibration.fixtures import get_fixture

    fixture = get_fixture(name)
    base = dict(
        model=fixture.model, out=Path(out), checkpoint=fixture.checkpoint, num_classes=fixture.num_classes,
        overrides=dict(fixture.overrides), calib_data=fixture.calib_dir, val_data=fixture.val_dir,
        preprocess=fixture.preprocess.to_dict(), label=fixture.name,
    )
    base.update({k: v for k, v in changes.items() if v is not None})
    return DeployOptions(**base)
