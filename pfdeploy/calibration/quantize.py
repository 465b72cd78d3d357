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
from collections.abc import Sequence
from dataclasses import dataclass
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


def cached_ranges_usable(cache_file: Path, method: str) -> bool:
    """True when `cache_file` holds ranges onnxruntime can read, made by `method`.

    A corrupt file (truncated, edited, another shape of JSON) is a cache miss: logged, recomputed
    and overwritten, never a traceback on every later run.
    """
    from onnxruntime.quantization.calibrate import load_tensors_data

    if not cache_file.is_file():
        return False
    try:
        ranges = load_tensors_data(cache_file)
        if not ranges.data or ranges.calibration_method != _ort_method(method):
            raise ValueError("no ranges, or ranges of another calibration method")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        log.warning("calibration cache %s is unreadable (%s: %s); recomputing it", cache_file,
                    type(exc).__name__, str(exc)[:120])
        return False
    return True


def calibrate_to_cache(model_path: Path, reader: _Reader, ops: list[str], method: str, cache_file: Path) -> bool:
    """Compute activation ranges into `cache_file` (atomically); False if usable ones were already there."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from tqdm import tqdm

    if cached_ranges_usable(cache_file, method):
        return False
    with temporary_dir("calib") as tmp:
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


def int8_from_onnx(onnx_path: str | Path, calib_data: str | Path, output: str | Path | None = None, *,
                   num_images: int = 512, method: str = "entropy", exclude: Sequence[str] = (),
                   seed: int = 0, cache_dir: str | Path | None = None, target: str = "tensorrt",
                   quantizer: str = "ort") -> Path:
    """Calibrate `onnx_path` on images from `calib_data` and write an INT8 Q/DQ graph; return its path.

    `target="tensorrt"` (default) writes the graph TensorRT compiles: symmetric INT8, zero point 0,
    per-channel weights (axis 0), per-tensor activations. `target="cpu"` writes the same
    quantization re-encoded for ONNX Runtime's x86 kernels (u8 activations, ReLU folded). Ranges are
    cached under `cache_dir` so a second call with the same graph and images skips calibration.
    The output carries the source metadata plus `pfdeploy.precision=int8` and `pfdeploy.calibration_*`.
    """
    from pfdeploy.calibration.qdq import cpu_graph_from_qdq, placement_report

    if method not in METHODS:
        raise PfdeployError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise PfdeployError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if quantizer not in QUANTIZERS:
        raise PfdeployError(f"unknown quantizer {quantizer!r}; use one of {', '.join(QUANTIZERS)}")
    if quantizer == "modelopt" and target != "tensorrt":
        raise PfdeployError("--quantizer modelopt makes TensorRT graphs only; use --target tensorrt")
    onnx_path = Path(onnx_path)
    output = Path(output) if output else default_output(onnx_path, target)
    check_output_file(output, "--output")  # before calibration, not after
    refuse_overwrite(output, [onnx_path], "--output")
    source = load_onnx(onnx_path, fix="pass the FP32 .onnx file from `pfdeploy export`")
    check_quantizable(source, onnx_path)
    _check_exclude(source, exclude)
    pre, input_format = preprocess_of(source, onnx_path)
    calib = calibration_set(calib_data, pre, input_format, num_images=num_images, seed=seed)
    family = family_of(source)
    ops = op_types_for(family)
    onnx_sha = sha256_file(onnx_path)
    key = cache_key(onnx_sha, calib.sha256, method, num_images, seed, [*ops, target])
    cache_file = cache_root(cache_dir) / f"{key}.json"
    start = time.perf_counter()
    with temporary_dir("quant") as tmp, _library_temporaries_in(tmp):
        pre_path, qdq_path = tmp / "pre.onnx", tmp / "qdq.onnx"
        if quantizer == "modelopt":
            modelopt_graph(onnx_path, qdq_path, calib.inputs, method, exclude)
        else:
            _pre_process(onnx_path, pre_path, target)
            graph_input = graph_inputs(source)[0]
            reader = _Reader(graph_input.name, calib.inputs, graph_input.fixed_batch)
            computed = calibrate_to_cache(pre_path, reader, ops, method, cache_file)
            log.info("calibration ranges %s %s", "computed into" if computed else "reused from", cache_file)
            float_outputs = TRANSFORMER_FLOAT_OUTPUTS if family == "transformer" else ()
            qdq_graph(pre_path, qdq_path, ops, cache_file, exclude, method, float_outputs)
        model = onnx.load(str(qdq_path))
    report = placement_report(model)
    extra: dict[str, Any] = {}
    if target == "cpu":
        model, extra = cpu_graph_from_qdq(model)
    meta = {p.key: p.value for p in source.metadata_props}
    meta.update({
        PREFIX + "precision": "int8",
        PREFIX + "source_onnx_sha256": onnx_sha,
        PREFIX + "calibration_method": method,
        PREFIX + "calibration_images": str(len(calib.inputs)),
        PREFIX + "calibration_seed": str(seed),
        PREFIX + "calibration_set_sha256": calib.sha256,
        PREFIX + "calibration_cache_key": key,
        PREFIX + "calibration_target": target,
        PREFIX + "calibration_quantizer": quantizer,
        PREFIX + "calibration_excluded": ",".join(exclude),
        PREFIX + "int8_placement": json.dumps({"int8": report["int8"], "float": report["float"]}, sort_keys=True),
        **({PREFIX + "cpu_reencoding": json.dumps(extra, sort_keys=True)} if extra else {}),
    })
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "pfdeploy"
    _save(model, output)
    log.info("wrote %s (%s, %d images, %.1f s)", output, method, len(calib.inputs), time.perf_counter() - start)
    return output


PROTOBUF_LIMIT = 2**31 - 1  # bytes: the largest message protobuf serializes


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
