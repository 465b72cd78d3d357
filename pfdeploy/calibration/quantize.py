"""FP32 ONNX -> calibrated INT8 Q/DQ ONNX, with onnxruntime.quantization doing the quantizing.

What pfdeploy owns here is only what is specific to these networks:
- placement per family: ResNets quantize Conv, Gemm, residual Add, Relu and every pool (max-pooling
  commutes with symmetric quantization, so the PF layers stay INT8); ViT/PiT quantize Conv, MatMul,
  Gemm and the max-pool mixers, leaving LayerNorm, Softmax, GELU and residual adds in float;
- calibration on real images preprocessed exactly as the graph's metadata says;
- a cache of calibration ranges keyed by ONNX sha256 + calibration-set hash + method + placement;
- the TensorRT graph (symmetric s8, zero point 0, per-channel weights on axis 0, per-tensor
  activations, float biases: TensorRT's parser rejects INT32 ones) and, on request, its ONNX Runtime
  CPU re-encoding (`target="cpu"`, see qdq.py). It passes pfdeploy.engines.trt_check.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pfdeploy._io import (
    atomic_path,
    check_output_file,
    refuse_overwrite,
    sha256_file,
    temporary_dir,
    write_bytes_atomic,
)
from pfdeploy._onnxfile import load_onnx
from pfdeploy._onnxgraph import graph_inputs
from pfdeploy.calibration.activations import PROTOBUF_LIMIT
from pfdeploy.calibration.preprocess import Preprocess, normalize_uint8, preprocess_from_metadata
from pfdeploy.choices import CALIB_METHODS, INT8_TARGETS
from pfdeploy.errors import PfdeployError

log = logging.getLogger(__name__)

METHODS, TARGETS = CALIB_METHODS, INT8_TARGETS
QUANTIZERS = ("ort", "modelopt")
MODELOPT_METHODS = {"entropy": "entropy", "minmax": "max"}
CALIB_BATCH = 8
CHUNK_IMAGES = 32  # histogram calibrators keep every activation of a chunk of images in memory
RESNET_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool")
TRANSFORMER_OPS = ("Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool")
# Transformers: no Quantize on MatMul/Gemm outputs (they feed bias adds, GELU, Softmax, residuals, all
# float): TensorRT's rule of quantizing inputs only, and on the CPU `DQ -> MatMul -> Add` becomes one
# integer kernel with float output and bias instead of QLinearMatMul + Quantize + Dequantize.
TRANSFORMER_FLOAT_OUTPUTS = ("MatMul", "Gemm")
PREFIX = "pfdeploy."


@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs and their content hash."""

    inputs: np.ndarray  # what the graph's input takes (float NCHW or uint8 NHWC)
    sha256: str
    stats: Any


def check_quantizable(model: onnx.ModelProto, path: Path) -> None:
    """Refuse graphs that are already INT8 or FP16: quantize the FP32 export."""
    from pfdeploy.calibration.qdq import is_quantized

    meta = {p.key: p.value for p in model.metadata_props}
    if is_quantized(model) or meta.get(PREFIX + "precision") == "int8":
        raise PfdeployError(f"{path} is already quantized (it holds Quantize/Dequantize nodes); "
                            "quantize the FP32 graph from `pfdeploy export` instead")
    fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    if fp16 or meta.get(PREFIX + "precision") == "fp16":
        raise PfdeployError(f"{path} is an FP16 graph; quantize the FP32 graph from `pfdeploy export` instead")


def preprocess_of(model: onnx.ModelProto, path: Path) -> tuple[Preprocess, str]:
    """(Preprocess, input format) from the graph's pfdeploy metadata, or ImageNet defaults."""
    meta = {p.key: p.value for p in model.metadata_props}
    fmt = meta.get(PREFIX + "input_format", "float-nchw")
    recorded = preprocess_from_metadata(meta, str(path))  # a std of 0 or bad JSON: one line
    if recorded is not None:
        return recorded, fmt
    dims = graph_inputs(model)[0].dims
    spatial = dims[1:3] if fmt == "uint8-nhwc" else dims[2:4]  # (H, W) of NHWC bytes or NCHW floats
    size = next((d for d in reversed(spatial) if isinstance(d, int) and d > 0), 224)
    log.warning("%s has no pfdeploy.preprocess metadata: calibrating with ImageNet mean/std, size %d, "
                "crop 0.875", path, size)
    return Preprocess(size=size), fmt


def calibration_set(source: str | Path, pre: Preprocess, input_format: str, *, num_images: int,
                    seed: int) -> CalibrationSet:
    """Load, preprocess and hash the calibration images (hash of the uint8 crops + preprocessing)."""
    from pfdeploy.calibration.images import load_labeled

    crops, _, stats = load_labeled(source, pre, num_images=num_images, seed=seed, layout="nhwc")
    digest = hashlib.sha256(json.dumps(pre.to_dict(), sort_keys=True).encode())
    digest.update(str(crops.shape).encode())
    digest.update(crops.tobytes())
    inputs = crops if input_format == "uint8-nhwc" else normalize_uint8(crops, pre)
    log.info("%s", stats.summary())
    return CalibrationSet(inputs, digest.hexdigest(), stats)


TRANSFORMER_MARKERS = ("LayerNormalization", "Softmax", "Erf")  # ops of attention/MLP blocks, never in a ResNet


def family_of(model: onnx.ModelProto) -> str:
    """'resnet' or 'transformer', from the graph's ops, checked against the metadata's model name.

    Metadata naming a family the graph contradicts (a ResNet graph labelled vit_s_max) is refused:
    the placement would be the other family's.
    """
    ops = {n.op_type for n in model.graph.node}
    graph_family = "transformer" if set(TRANSFORMER_MARKERS) & ops else "resnet"
    meta = {p.key: p.value for p in model.metadata_props}
    if PREFIX + "model" in meta:
        from pfdeploy.models import get_config

        try:
            named = "resnet" if get_config(meta[PREFIX + "model"]).family == "resnet" else "transformer"
        except PfdeployError:
            return graph_family
        if named != graph_family:
            has = "has" if graph_family == "transformer" else "has no"
            raise PfdeployError(
                f"metadata pfdeploy.model={meta[PREFIX + 'model']} (a {named}) contradicts the graph, which {has} "
                f"{'/'.join(TRANSFORMER_MARKERS)} ops (a {graph_family}); the metadata was edited or copied "
                "from another model: re-export it with `pfdeploy export`"
            )
    return graph_family


def op_types_for(family: str) -> list[str]:
    """Op types pfdeploy quantizes for a family (see module docstring for why)."""
    return list(RESNET_OPS if family == "resnet" else TRANSFORMER_OPS)


def calibration_batches(inputs: np.ndarray, fixed_batch: int | None) -> list[np.ndarray]:
    """`inputs` in batches of CALIB_BATCH, or, for a graph whose batch is fixed, of exactly that size.

    A fixed-batch graph takes no other size, so its last batch is filled up with images from the
    start of the set (wrapping round when the graph's batch exceeds the set). Copies of real images
    add no value outside the set's range, so min-max ranges are exactly unchanged, and entropy /
    percentile histograms count at most batch-1 of the images twice; padding with zeros or noise
    would instead pull the ranges towards values no real image has.
    """
    if fixed_batch is None:
        return [inputs[i:i + CALIB_BATCH] for i in range(0, len(inputs), CALIB_BATCH)]
    total = -(-len(inputs) // fixed_batch) * fixed_batch
    padded = inputs[np.arange(total) % len(inputs)]
    return [padded[i:i + fixed_batch] for i in range(0, total, fixed_batch)]


class _Reader:
    """onnxruntime CalibrationDataReader over an in-memory array, in fixed batches, range-selectable."""

    def __init__(self, input_name: str, inputs: np.ndarray, fixed_batch: int | None = None):
        self.name = input_name
        self.batches = calibration_batches(inputs, fixed_batch)
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self.batches[start_index:end_index])

    def get_next(self):
        batch = next(self._iter, None)
        return None if batch is None else {self.name: batch}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))


def cache_root(cache_dir: str | Path | None) -> Path:
    """The calibration cache folder: `cache_dir`, $PFDEPLOY_CACHE, or ~/.cache/pfdeploy."""
    base = cache_dir or os.environ.get("PFDEPLOY_CACHE") or Path.home() / ".cache" / "pfdeploy"
    return Path(base) / "calibration"


def cache_key(onnx_sha: str, calib_sha: str, method: str, num_images: int, seed: int, ops: Sequence[str]) -> str:
    """Hex key of one calibration result."""
    parts = [onnx_sha, calib_sha, method, str(num_images), str(seed), ",".join(sorted(ops))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax}[method]


#: A cached range is plausible when its magnitude is at most RANGE_WIDER times the largest magnitude the FP32
#: graph computes on the first REFERENCE_IMAGES calibration images, and it holds their whole range (minmax and
#: entropy: the cache saw those images and more) or, for percentile, which clips, at least 1/RANGE_NARROWER of
#: their width and overlapping it. Measured on the trained fixtures (256 images): magnitude 1.0-1.65x theirs for
#: every method, percentile's width 0.89-1.46x; a bound that a good cache misses only costs a recalibration.
RANGE_WIDER, RANGE_NARROWER, REFERENCE_IMAGES = 4.0, 4.0, 32
CLIPPING_METHODS = ("percentile",)
#: The key under which pfdeploy stores the sha256 of a cache's method and ranges in the file itself
#: (onnxruntime's reader ignores other keys): an edit that does not also rewrite it is a miss.
DIGEST_KEY = "pfdeploy_sha256"
_TENSOR_KEYS = frozenset({"avg", "std", "lowest", "highest", "hist", "hist_edges", "bins", "CLS"})
Ranges = dict[str, tuple[float, float]]  # tensor name -> (lowest, highest)


def _range_value(value: Any) -> float | None:
    """A cached lowest/highest as a float: a JSON number or onnxruntime's one-element numpy.array object."""
    if isinstance(value, dict) and value.get("CLS") == "numpy.array" and value.get("dtype") in ("float32", "float16"):
        value = value.get("data")
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def ranges_digest(data: dict) -> str:
    """sha256 of a calibration cache's method and ranges (canonical JSON): what pfdeploy stores under DIGEST_KEY."""
    payload = {"calibration_method": data.get("calibration_method"), "data": data.get("data")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def signed_cache(data: dict) -> dict:
    """`data` (onnxruntime's calibration JSON) with its DIGEST_KEY."""
    return {**data, DIGEST_KEY: ranges_digest(data)}


def cached_ranges(cache_file: Path, method: str) -> Ranges | str:
    """{tensor: (lowest, highest)} of a calibration cache file made by `method`, or why it is unusable.

    The file is read within pfdeploy's JSON limits (a FIFO, deep or huge JSON are unusable), must be in the
    form onnxruntime writes (`save_tensors_data`, without SmoothQuant) and load with its reader, every
    range must be finite with lowest <= highest, and the file must carry the digest pfdeploy wrote with it
    (`signed_cache`), so a range edited by hand or damaged on disk is never used."""
    from onnxruntime.quantization.calibrate import TensorsData

    from pfdeploy.limits import read_json_file

    try:
        data = read_json_file(cache_file, "calibration cache", "it is recomputed")
    except PfdeployError as exc:
        return str(exc)
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict) or not data["data"]:
        return "not an object of calibration ranges"
    if data.get("smooth_quant", False) is not False:
        return "ranges made with SmoothQuant, which pfdeploy does not use"
    expected = {"CLS": "CalibrationMethod", "value": f"CalibrationMethod.{_ort_method(method).name}"}
    if data.get("calibration_method") != expected:
        return f"ranges of another calibration method than {method}"
    ranges = {}
    for name, tensor in data["data"].items():
        if not isinstance(tensor, dict) or not set(tensor) <= _TENSOR_KEYS or tensor.get("CLS", "TensorData") != \
                "TensorData":
            return f"tensor {name[:60]!r} is not a TensorData object"
        low, high = _range_value(tensor.get("lowest")), _range_value(tensor.get("highest"))
        if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
            return f"tensor {name[:60]!r} has a range that is not two finite numbers"
        if low > high:
            return f"tensor {name[:60]!r} has lowest {low:g} > highest {high:g}"
        ranges[name] = (low, high)
    try:
        TensorsData.from_dict(data)  # what quantize_static will do with the file
    except Exception as exc:  # noqa: BLE001 - onnxruntime's reader on an edited file: ValueError, TypeError, ...
        return f"onnxruntime cannot read it ({type(exc).__name__}: {str(exc)[:80]})"
    if data.get(DIGEST_KEY) != ranges_digest(data):
        return "its ranges are not the ones pfdeploy wrote (edited, damaged, or written by another tool)"
    return ranges


def ranges_problem(ranges: Ranges, reference: Ranges, method: str = "entropy") -> str | None:
    """Why cached `ranges` of `method` do not belong to the graph whose FP32 `reference` ranges (min/max on the
    first calibration images) are given (None if they do): other tensor names, or a range out of proportion
    with what the graph computes (all zero, +-1e30, disjoint, far wider or narrower; see RANGE_WIDER)."""
    if set(ranges) != set(reference):
        other = sorted(set(ranges) ^ set(reference))
        return f"its tensors differ from the graph's calibrated tensors ({', '.join(n[:40] for n in other[:3])})"
    for name, (low, high) in ranges.items():
        ref_low, ref_high = reference[name]
        magnitude, ref_magnitude = max(abs(low), abs(high)), max(abs(ref_low), abs(ref_high))
        slack = 1e-5 * max(ref_magnitude, 1e-6)  # float32 rounding of the same minimum and maximum
        if method in CLIPPING_METHODS:
            narrow = (high - low) * RANGE_NARROWER < ref_high - ref_low or high < ref_low or low > ref_high
        else:  # computed over these images and more: holds their range
            narrow = low > ref_low + slack or high < ref_high - slack
        if magnitude > RANGE_WIDER * max(ref_magnitude, 1e-6) or narrow:
            return (f"tensor {name[:60]!r} has range [{low:g}, {high:g}] where the FP32 graph computes "
                    f"[{ref_low:g}, {ref_high:g}]")
    return None


def cached_ranges_usable(cache_file: Path, method: str,
                         reference: Ranges | Callable[[], Ranges] | None = None) -> bool:
    """True when `cache_file` holds ranges of `method` that pass `cached_ranges` and, with `reference` (the
    graph's own ranges, or a function computing them, called only for a well-formed file), fit the graph
    (`ranges_problem`). A bad one (truncated, edited, poisoned: all 0, NaN, +Inf, lowest > highest, 1e30,
    another graph's) is a cache miss: logged, recomputed and overwritten, never trusted and never a
    traceback. A missing file is a plain miss."""
    if not (cache_file.exists() or cache_file.is_symlink()):
        return False
    ranges = cached_ranges(cache_file, method)
    problem = ranges if isinstance(ranges, str) else None
    if problem is None and reference is not None:
        problem = ranges_problem(ranges, reference() if callable(reference) else reference, method)
    if problem:
        log.warning("calibration cache %s is unreadable or does not fit this graph (%s); recomputing it", cache_file,
                    problem[:200])
        return False
    return True


def reference_ranges(model_path: Path, reader: _Reader, ops: list[str], folder: Path) -> Ranges:
    """Min/max of every calibrated tensor of the graph on its first REFERENCE_IMAGES calibration images
    (onnxruntime's MinMax calibrator, the same tensors every method calibrates): what a cache is judged by."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(model_path, ops, augmented_model_path=str(folder / "reference.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax, extra_options={})
    reader.set_range(0, max(1, min(len(reader), REFERENCE_IMAGES // len(reader.batches[0]))))
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    reader.rewind()
    return {name: (float(np.min(t.range_value[0])), float(np.max(t.range_value[1]))) for name, t in ranges.data.items()}


def calibrate_to_cache(model_path: Path, reader: _Reader, ops: list[str], method: str, cache_file: Path) -> bool:
    """Compute activation ranges into `cache_file` (atomically); False if usable ones were already there.

    Cached ranges are used only when every one is finite, ordered, of this graph's calibrated tensors and
    plausible against what the FP32 graph computes on the first calibration images (`cached_ranges_usable`);
    anything else is recomputed, so a cache never lowers the quality of the output. Freshly computed ranges
    that are not finite (an FP32 graph computing NaN/Inf on these images) are one PfdeployError line."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from tqdm import tqdm

    with temporary_dir("calib") as tmp:
        if cached_ranges_usable(cache_file, method, lambda: reference_ranges(model_path, reader, ops, tmp)):
            return False
        calibrator = create_calibrator(model_path, ops, augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=_ort_method(method), extra_options={})
        chunk = max(1, CHUNK_IMAGES // len(reader.batches[0]))  # batches per chunk
        for start in tqdm(range(0, len(reader), chunk), desc=f"calibrate ({method})", unit="chunk",
                          disable=None, leave=False):
            reader.set_range(start, min(start + chunk, len(reader)))
            with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints progress lines
                calibrator.collect_data(reader)
        with contextlib.redirect_stdout(io.StringIO()):
            ranges = calibrator.compute_data()
        del calibrator
        # onnxruntime writes its own temporary beside the file it saves: keep that in the scratch folder
        save_tensors_data(ranges, tmp / "ranges.json")
        signed = json.dumps(signed_cache(json.loads((tmp / "ranges.json").read_text(encoding="utf-8"))))
        (tmp / "ranges.json").write_text(signed, encoding="utf-8")
        fresh = cached_ranges(tmp / "ranges.json", method)
        if isinstance(fresh, str):
            raise PfdeployError(f"calibrating {model_path.name} gave unusable ranges ({fresh}); the FP32 graph "
                                "computes NaN/Inf on these images: check the graph with `pfdeploy verify`")
        write_bytes_atomic(cache_file, (tmp / "ranges.json").read_bytes())
    _remove_old_ort_temporaries(cache_file.parent)
    return True


def _remove_old_ort_temporaries(folder: Path) -> None:
    """Remove `.calibcache_*.tmp` files that earlier pfdeploy versions let onnxruntime leave in the cache
    when killed (older than this run; ranges are no longer saved there directly)."""
    from pfdeploy._io import process_start

    for leftover in folder.glob(".calibcache_*.tmp"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < process_start():
                leftover.unlink()
                log.info("removed %s, left by a run that was killed", leftover)


def _pre_process(src: Path, dst: Path, target: str) -> None:
    """onnxruntime's quant_pre_process: symbolic shape inference (+ graph optimization for the CPU).

    Its optimization fuses e.g. the erf-GELU into com.microsoft ops that TensorRT's ONNX parser
    rejects, so the TensorRT graph keeps standard ONNX ops only.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_optimization=target == "tensorrt", skip_symbolic_shape=False)


def qdq_graph(pre_path: Path, out_path: Path, ops: list[str], cache_file: Path, exclude: Sequence[str],
              method: str, float_outputs: Sequence[str] = (), quantize_bias: bool = False) -> None:
    """The symmetric s8 Q/DQ graph TensorRT takes, from cached ranges (onnxruntime's QDQ quantizer).

    Weights and activations are quantized; Conv/Gemm biases stay float (`QuantizeBias: False`), as
    TensorRT wants: its parser rejects the INT32 bias behind a DequantizeLinear that onnxruntime
    writes by default (`quantize_bias=True`, kept only for benchmarks/bench_int8_bias.py's comparison;
    both targets ship float biases).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(pre_path), str(out_path), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=ops,
        per_channel=True, reduce_range=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude), calibration_cache_path=str(cache_file), calibrate_method=_ort_method(method),
        # ForceQuantizeNoInputCheck: quantize the max-pools even where their input is float (the
        # transformers' mixer follows a GELU), so the parameter-free layers always run in INT8.
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "ForceQuantizeNoInputCheck": True,
                       "OpTypesToExcludeOutputQuantization": list(float_outputs), "QuantizeBias": quantize_bias},
    )


def modelopt_graph(src: Path, out_path: Path, inputs: np.ndarray, method: str, exclude: Sequence[str]) -> None:
    """The Q/DQ graph from NVIDIA ModelOpt's ONNX quantizer (TensorRT placement rules), if installed.

    Written against `modelopt.onnx.quantization.quantize` as documented; not run on this project's
    machines (ModelOpt is not installed there). No range cache on this path.
    """
    from pfdeploy.errors import MissingDependencyError

    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise MissingDependencyError("NVIDIA ModelOpt is not installed; pip install 'nvidia-modelopt[onnx]' "
                                     "or use --quantizer ort") from exc
    if method not in MODELOPT_METHODS:
        raise PfdeployError(f"ModelOpt calibrates with {' or '.join(MODELOPT_METHODS)}, not {method!r}")
    quantize(onnx_path=str(src), quantize_mode="int8", calibration_data=inputs,
             calibration_method=MODELOPT_METHODS[method], nodes_to_exclude=list(exclude) or None,
             calibration_eps=["cpu"], output_path=str(out_path))


def _check_exclude(model: onnx.ModelProto, exclude: Sequence[str]) -> None:
    names = {n.name for n in model.graph.node}
    missing = [e for e in exclude if e not in names]
    if missing:
        raise PfdeployError(f"--exclude names no node of this graph: {', '.join(missing[:5])}; "
                            "see node names with `pfdeploy info --onnx FILE`")


def default_output(onnx_path: Path, target: str) -> Path:
    """`<stem>.int8.onnx` (TensorRT graph) or `<stem>.int8-cpu.onnx` beside the input."""
    stem = onnx_path.name.removesuffix(".onnx").removesuffix(".fp32")
    return onnx_path.with_name(f"{stem}.int8{'-cpu' if target == 'cpu' else ''}.onnx")


@contextlib.contextmanager
def _library_temporaries_in(folder: Path):
    """Point Python's tempfile at `folder` while onnxruntime's quantizer runs: its own scratch folders
    (`pre.quant.*`, `ort.quant.*`) then go away with ours, also after a kill. Not for concurrent use."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


KEPT_GRAPHS = 4  # Q/DQ graphs a Calibrated job keeps in memory for reuse
EQUALIZE_IMAGES = 128  # equalization's per-channel ranges and bias correction's means: the first 128 calibration images
# Bias correction by family, as measured on the trained fixtures and their outlier variants (docs/benchmarks.md,
# "INT8 with outlier channels"): ResNets -0.1 to +2.4 dB logit SQNR (mean +1.1; top-1 never lower with entropy or
# minmax), transformers -0.3 dB with entropy (top-1 equal), so it is on for ResNets and off for transformers.
BIAS_CORRECTION = {"resnet": True, "transformer": False}


@dataclass
class Calibrated:
    """One FP32 graph, equalized and calibrated once, from which Q/DQ graphs with any exclude list are made
    (the budget and the sensitivity analysis make many; each costs one onnxruntime quantize, no calibration)."""

    source: onnx.ModelProto  # the FP32 graph as read
    fp32: onnx.ModelProto  # the graph calibrated: the source with equalized weights (same function)
    fp32_path: Path  # `fp32`, written in the scratch folder
    pre_path: Path  # `fp32` after onnxruntime's quant_pre_process
    calib: CalibrationSet
    family: str
    ops: list[str]
    method: str
    target: str
    quantizer: str
    seed: int
    onnx_sha: str
    key: str
    cache_file: Path
    folder: Path
    equalization: list[dict[str, Any]]
    bias_correction: bool = False
    built: int = 0
    _made: dict[tuple[str, ...], onnx.ModelProto] = field(default_factory=dict, repr=False)

    @property
    def input_name(self) -> str:
        return graph_inputs(self.source)[0].name

    @property
    def source_fixed_batch(self) -> int | None:
        return graph_inputs(self.source)[0].fixed_batch

    def batches(self, inputs: np.ndarray | None = None) -> list[np.ndarray]:
        """`inputs` (default: the calibration inputs) in the batches the graph takes."""
        return calibration_batches(self.calib.inputs if inputs is None else inputs, self.source_fixed_batch)

    def qdq_model(self, exclude: Sequence[str] = ()) -> onnx.ModelProto:
        """The symmetric Q/DQ graph (the TensorRT form, no metadata) with `exclude` kept float (a copy:
        the last few graphs are kept, since the budget and the analysis ask for the same ones again)."""
        key = tuple(sorted(set(exclude)))
        if key not in self._made:
            self._made[key] = self._build(exclude)
            while len(self._made) > KEPT_GRAPHS:
                self._made.pop(next(iter(self._made)))
        copy = onnx.ModelProto()
        copy.CopyFrom(self._made[key])
        return copy

    def _build(self, exclude: Sequence[str]) -> onnx.ModelProto:
        self.built += 1
        out = self.folder / f"qdq{self.built}.onnx"
        if self.quantizer == "modelopt":
            modelopt_graph(self.fp32_path, out, self.calib.inputs, self.method, exclude)
        else:
            float_outputs = TRANSFORMER_FLOAT_OUTPUTS if self.family == "transformer" else ()
            qdq_graph(self.pre_path, out, self.ops, self.cache_file, exclude, self.method, float_outputs)
        model = onnx.load(str(out))
        out.unlink()
        if self.bias_correction:
            from pfdeploy.calibration.bias import bias_corrected

            reference = onnx.load(str(self.pre_path if self.quantizer == "ort" else self.fp32_path))
            model, _ = bias_corrected(model, reference, self.input_name, spread(self.calib.inputs, EQUALIZE_IMAGES),
                                      self.source_fixed_batch, self.folder)
        return model

    def int8_model(self, exclude: Sequence[str] = (), extra_meta: dict[str, str] | None = None) -> onnx.ModelProto:
        """The INT8 graph as `int8_from_onnx` writes it: Q/DQ (re-encoded for the CPU target), with metadata."""
        from pfdeploy.calibration.qdq import cpu_graph_from_qdq, placement_report

        model = self.qdq_model(exclude)
        report = placement_report(model)
        extra: dict[str, Any] = {}
        if self.target == "cpu":
            model, extra = cpu_graph_from_qdq(model)
        meta = {p.key: p.value for p in self.source.metadata_props}
        meta.update({
            PREFIX + "precision": "int8",
            PREFIX + "source_onnx_sha256": self.onnx_sha,
            PREFIX + "calibration_method": self.method,
            PREFIX + "calibration_images": str(len(self.calib.inputs)),
            PREFIX + "calibration_seed": str(self.seed),
            PREFIX + "calibration_set_sha256": self.calib.sha256,
            PREFIX + "calibration_cache_key": self.key,
            PREFIX + "calibration_target": self.target,
            PREFIX + "calibration_quantizer": self.quantizer,
            PREFIX + "calibration_excluded": ",".join(exclude),
            PREFIX + "calibration_equalization": json.dumps(equalization_summary(self.equalization), sort_keys=True),
            PREFIX + "int8_placement": json.dumps({"int8": report["int8"], "float": report["float"]}, sort_keys=True),
            **({PREFIX + "cpu_reencoding": json.dumps(extra, sort_keys=True)} if extra else {}),
            **(extra_meta or {}),
        })
        del model.metadata_props[:]
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        model.producer_name = "pfdeploy"
        return model


def spread(inputs: np.ndarray, count: int) -> np.ndarray:
    """`count` of `inputs` evenly spaced through the set (all of them when there are fewer): image sets
    come in class order, so the first `count` would see only the first classes."""
    if len(inputs) <= count:
        return inputs
    return inputs[np.linspace(0, len(inputs) - 1, count).round().astype(int)]


def equalization_summary(report: list[dict[str, Any]]) -> dict[str, Any]:
    """What the metadata records of an equalization: sites, rescaled channels, worst imbalance before/after."""
    if not report:
        return {"sites": 0}
    return {"sites": len(report), "scaled_channels": sum(r["scaled_channels"] for r in report),
            "through": sorted({op for r in report for op in r["through"]}),
            "worst_imbalance_before": round(max(r["imbalance_before"] for r in report), 2),
            "worst_imbalance_after": round(max(r["imbalance_after"] for r in report), 2)}


def check_int8_arguments(method: str, target: str, quantizer: str) -> None:
    """One line for an unknown method, target or quantizer, or a combination that does not exist."""
    if method not in METHODS:
        raise PfdeployError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise PfdeployError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if quantizer not in QUANTIZERS:
        raise PfdeployError(f"unknown quantizer {quantizer!r}; use one of {', '.join(QUANTIZERS)}")
    if quantizer == "modelopt" and target != "tensorrt":
        raise PfdeployError("--quantizer modelopt makes TensorRT graphs only; use --target tensorrt")


@contextlib.contextmanager
def calibrated(onnx_path: str | Path, calib_data: str | Path, *, num_images: int = 512, method: str = "entropy",
               exclude: Sequence[str] = (), seed: int = 0, cache_dir: str | Path | None = None,
               target: str = "tensorrt", quantizer: str = "ort", equalize: bool = True,
               bias_correction: bool | None = None):
    """Read, check, equalize and calibrate `onnx_path` once; yields a `Calibrated` (valid inside the block).

    `exclude` is only checked here (every name must be a node of the graph); pass it to `int8_model`.
    """
    check_int8_arguments(method, target, quantizer)
    onnx_path = Path(onnx_path)
    source = load_onnx(onnx_path, fix="pass the FP32 .onnx file from `pfdeploy export`")
    check_quantizable(source, onnx_path)
    _check_exclude(source, exclude)
    pre, input_format = preprocess_of(source, onnx_path)
    calib = calibration_set(calib_data, pre, input_format, num_images=num_images, seed=seed)
    family = family_of(source)
    ops = op_types_for(family)
    onnx_sha = sha256_file(onnx_path)
    if bias_correction is None:
        bias_correction = BIAS_CORRECTION[family]
    from pfdeploy.calibration.activations import save_for_session

    with temporary_dir("quant") as tmp, _library_temporaries_in(tmp):
        fp32, report = source, []
        if equalize:
            from pfdeploy.calibration.equalize import equalized_model

            graph_input = graph_inputs(source)[0]
            subset = calibration_batches(spread(calib.inputs, EQUALIZE_IMAGES), graph_input.fixed_batch)
            fp32, report = equalized_model(source, graph_input.name, subset, tmp)
        fp32_path = onnx_path if fp32 is source else save_for_session(fp32, tmp / "equalized.onnx")
        # the ranges belong to the graph calibrated: key them on its weights (equalized or not)
        calibrated_sha = onnx_sha if fp32 is source else _saved_graph_sha(fp32_path)
        key = cache_key(calibrated_sha, calib.sha256, method, num_images, seed, [*ops, target])
        cache_file = cache_root(cache_dir) / f"{key}.json"
        pre_path = tmp / "pre.onnx"
        if quantizer == "ort":
            _pre_process(fp32_path, pre_path, target)
            graph_input = graph_inputs(source)[0]
            reader = _Reader(graph_input.name, calib.inputs, graph_input.fixed_batch)
            computed = calibrate_to_cache(pre_path, reader, ops, method, cache_file)
            log.info("calibration ranges %s %s", "computed into" if computed else "reused from", cache_file)
        yield Calibrated(source, fp32, fp32_path, pre_path, calib, family, ops, method, target, quantizer, seed,
                         onnx_sha, key, cache_file, tmp, report, bias_correction)


def _saved_graph_sha(path: Path) -> str:
    """sha256 of a graph written by `save_for_session`, with its external data file when it has one (a graph
    over 2 GB cannot be serialized in memory to hash it)."""
    data = path.with_name(path.name + ".data")
    if not data.is_file():
        return sha256_file(path)
    return hashlib.sha256(f"{sha256_file(path)} {sha256_file(data)}".encode()).hexdigest()


ANALYZE_MODES = ("no", "yes", "if-failing")


def sensitivity_paths(output: Path) -> tuple[Path, Path]:
    """(JSON, PNG) of the sensitivity analysis of the INT8 graph `output`: `<stem>.sensitivity.json/.png`."""
    stem = output.name.removesuffix(".onnx")
    return output.with_name(f"{stem}.sensitivity.json"), output.with_name(f"{stem}.sensitivity.png")


def _check_budget_arguments(max_drop: float | None, val_data, analyze: str) -> None:
    if analyze not in ANALYZE_MODES:
        raise PfdeployError(f"unknown analyze mode {analyze!r}; use one of {', '.join(ANALYZE_MODES)}")
    if max_drop is None:
        return
    if not isinstance(max_drop, (int, float)) or isinstance(max_drop, bool) or not np.isfinite(max_drop) \
            or max_drop < 0:
        raise PfdeployError(f"--max-drop must be a number of top-1 points >= 0, got {max_drop!r}")
    if val_data is None:
        raise PfdeployError("--max-drop needs --val-data DIR: labelled images (class folders) for top-1, or any "
                            "images for top-1 agreement with FP32; the calibration images would judge themselves")


def int8_from_onnx(onnx_path: str | Path, calib_data: str | Path, output: str | Path | None = None, *,
                   num_images: int = 512, method: str = "entropy", exclude: Sequence[str] = (),
                   seed: int = 0, cache_dir: str | Path | None = None, target: str = "tensorrt",
                   quantizer: str = "ort", equalize: bool = True, bias_correction: bool | None = None,
                   val_data: str | Path | None = None, max_drop: float | None = None, analyze: str = "no",
                   speed_rounds: int = 5) -> Path:
    """Calibrate `onnx_path` on images from `calib_data` and write an INT8 Q/DQ graph; return its path.

    `target="tensorrt"` (default) writes the graph TensorRT compiles: symmetric INT8, zero point 0,
    per-channel weights (axis 0), per-tensor activations. `target="cpu"` writes the same
    quantization re-encoded for ONNX Runtime's x86 kernels (u8 activations, ReLU folded). With
    `equalize` (default) per-channel scales are first moved between consecutive layers where that is
    exact (pfdeploy.calibration.equalize: weights only, the same ops), so outlier channels do not
    crush an activation's INT8 grid; `bias_correction` (default: on for ResNets, off for
    transformers, as measured) removes each layer's mean INT8 error from its float bias. Ranges are
    cached under `cache_dir` so a second call with the same graph and images skips calibration.

    `max_drop` (top-1 points, needs `val_data`) keeps the most sensitive tensors in float until the
    graph is within the budget on `val_data` (pfdeploy.calibration.budget; `speed_rounds` > 0 also
    times the graph before and after). `analyze` "yes" (or "if-failing": only when the graph fails
    `verify`'s INT8 tolerances, or loses more than a point, against FP32 on those images) writes the
    sensitivity analysis beside the output (`sensitivity_paths`). The output carries the source
    metadata plus `pfdeploy.precision=int8`, `pfdeploy.calibration_*` and `pfdeploy.int8_budget`.
    """
    check_int8_arguments(method, target, quantizer)
    _check_budget_arguments(max_drop, val_data, analyze)
    onnx_path = Path(onnx_path)
    output = Path(output) if output else default_output(onnx_path, target)
    check_output_file(output, "--output")  # before calibration, not after
    refuse_overwrite(output, [onnx_path], "--output")
    start = time.perf_counter()
    analysis = None
    with calibrated(onnx_path, calib_data, num_images=num_images, method=method, exclude=exclude, seed=seed,
                    cache_dir=cache_dir, target=target, quantizer=quantizer, equalize=equalize,
                    bias_correction=bias_correction) as job:
        final, extra = list(exclude), {}
        if max_drop is not None or analyze != "no":
            from pfdeploy.calibration.sensitivity import ANALYSIS_IMAGES, JUDGE_IMAGES, Judge, eval_images

            pre, input_format = preprocess_of(job.source, onnx_path)
            count = JUDGE_IMAGES if max_drop is not None else ANALYSIS_IMAGES  # the budget judges on more
            images = eval_images(val_data or calib_data, pre, input_format, count, seed=seed)
            judge = Judge(job, images)
        if max_drop is not None:
            from pfdeploy.calibration.budget import budget_summary, search_budget, speed_cost

            result = search_budget(job, images, float(max_drop), exclude, judge=judge)
            final += result.kept_float
            if result.kept_float and speed_rounds > 0:
                result.speed = speed_cost(job, exclude, final, images.inputs, speed_rounds)
            extra[PREFIX + "int8_budget"] = json.dumps(result.to_dict(), sort_keys=True)
            log.info("%s", budget_summary(result))
        model = job.int8_model(final, extra)
        if analyze == "yes" or (analyze == "if-failing" and not judge.check(final)["passed"]):
            from pfdeploy.calibration.sensitivity import analyze as sensitivity_of

            analysis = sensitivity_of(job, images, final, judge=judge.subset(ANALYSIS_IMAGES))
        used = len(job.calib.inputs)
    _save(model, output)
    _remove_old_analysis(output)  # it described the graph this one replaces
    if analysis is not None:
        _write_analysis(analysis, output)
    log.info("wrote %s (%s, %d images, %.1f s)", output, method, used, time.perf_counter() - start)
    return output


def _remove_old_analysis(output: Path) -> None:
    """Remove the sensitivity JSON and plot of an earlier INT8 graph `output`: only a JSON pfdeploy wrote for a
    graph of that name (its schema and `int8_file`), and the plot beside it; anything else stays."""
    from pfdeploy.calibration.sensitivity import SCHEMA
    from pfdeploy.limits import read_json_file

    json_path, png_path = sensitivity_paths(output)
    if not json_path.exists():
        return
    try:
        old = read_json_file(json_path, "sensitivity analysis", "it is left in place")
    except PfdeployError:  # not pfdeploy's (a FIFO, a folder, not JSON): leave it
        return
    if not (isinstance(old, dict) and old.get("schema") == SCHEMA and old.get("int8_file") == output.name):
        return
    for stale in (json_path, png_path):
        if stale.is_file():
            stale.unlink()
            log.info("removed %s: it analysed the INT8 graph %s had before", stale, output.name)


def _write_analysis(analysis: dict[str, Any], output: Path) -> None:
    """The sensitivity JSON (naming the INT8 graph's sha256) and, with matplotlib, its bar plot."""
    from pfdeploy._io import write_json_atomic
    from pfdeploy.calibration.sensitivity import plot_sensitivity
    from pfdeploy.errors import MissingDependencyError

    json_path, png_path = sensitivity_paths(output)
    write_json_atomic(json_path, {**analysis, "int8_file": output.name, "int8_sha256": sha256_file(output)})
    try:
        plot_sensitivity(analysis, png_path)
    except MissingDependencyError as exc:
        log.info("no sensitivity plot: %s", exc)
    log.info("sensitivity analysis in %s", json_path)


def _save(model: onnx.ModelProto, output: Path, limit: int = PROTOBUF_LIMIT) -> None:
    """Check and write the graph atomically.

    A graph of `limit` bytes or more (protobuf cannot serialize one of 2 GB) keeps its initializers
    in `<output name>.data` beside it, ONNX's external-data format. The data file is written
    (atomically) before the graph that names it, so a graph never points at a partial data file.
    The tensors of `model` are moved out to that file.
    """
    if model.ByteSize() < limit:
        onnx.checker.check_model(model)
        with atomic_path(output) as tmp:
            onnx.save(model, str(tmp))
        return
    from onnx.external_data_helper import convert_model_to_external_data, write_external_data_tensors

    data = output.with_name(output.name + ".data")
    with atomic_path(data) as tmp_data:
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=tmp_data.name,
                                       size_threshold=1024)
        write_external_data_tensors(model, str(output.parent))  # into tmp_data, beside the output
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data.name
    with atomic_path(output) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))  # reads the data file beside it
