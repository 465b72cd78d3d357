"""INT8 vs FP32 on this CPU (ONNX Runtime, batch 8): the TensorRT Q/DQ graph and its CPU re-encoding.

For r50_hybrid, r50 and vit_s_max (224x224, seeded random weights: speed does not depend on the
values), the FP32 export, the INT8 graph made for TensorRT (`--target tensorrt`: symmetric s8)
and the same quantization re-encoded for ONNX Runtime's x86 kernels (`--target cpu`) are timed
interleaved round by round in one run; medians are reported with the INT8/FP32 speed-up.
Goal: `cpu` target >= 1.8x FP32 for all three. Calibration: 32 digit images, min-max (the
placement, not the ranges, decides the speed).

    flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_int8.py
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = ("r50_hybrid", "r50", "vit_s_max")
BATCH = 8
GOAL = 1.8
COMMAND = "flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_int8.py"
CALIB = HERE.parent / "tests" / "fixtures" / "digits" / "calib"
CACHE = Path(tempfile.gettempdir()) / "pfdeploy-bench-int8"


def plain_quantize_static(fp32: Path, out: Path) -> None:
    """The baseline before this work: onnxruntime's quantize_static with its defaults for every op
    type, QDQ, per-channel symmetric s8, no pre-processing, same 32 calibration images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from pfdeploy.calibration.images import load_batch
    from pfdeploy.calibration.quantize import _Reader, preprocess_of

    pre, _ = preprocess_of(onnx.load(str(fp32), load_external_data=False), fp32)
    reader = _Reader("input", load_batch(CALIB, pre, num_images=32))
    quantize_static(str(fp32), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def _calibration_digest() -> str:
    """Hash of the calibration code, so cached INT8 graphs are remade when it changes."""
    import hashlib

    import pfdeploy.calibration

    digest = hashlib.sha256()
    for path in sorted(Path(pfdeploy.calibration.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def artifacts(name: str) -> dict[str, Path]:
    """{"fp32", "plain", "int8 (tensorrt)", "int8 (cpu)"} graphs of `name`, made once and cached."""
    sys.path.insert(0, str(HERE))
    from bench_fp32 import export_cached

    from pfdeploy.calibration import int8_from_onnx

    fp32 = export_cached(name)
    out = {"fp32": fp32, "plain": CACHE / f"{fp32.stem}.plain-qdq.onnx"}
    if not out["plain"].exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        plain_quantize_static(fp32, out["plain"])
    for target in ("tensorrt", "cpu"):
        path = CACHE / f"{fp32.stem}.{_calibration_digest()}.int8-{target}.onnx"
        if not path.exists():
            int8_from_onnx(fp32, CALIB, path, num_images=32, method="minmax", target=target, cache_dir=CACHE)
        out[f"int8 ({target})"] = path
    return out


def measure(models=MODELS, rounds: int = 7) -> list[dict]:
    """One row per model: FP32 and both INT8 graphs timed interleaved, medians and speed-ups."""
    from pfdeploy.runtime.ort_options import ort_session_from_onnx
    from pfdeploy.runtime.timing import time_interleaved

    rows = []
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 224, 224)).astype(np.float32)
    for name in models:
        sessions = {label: ort_session_from_onnx(path) for label, path in artifacts(name).items()}
        loads = {label: (lambda s=s: s.run(None, {"input": x})) for label, s in sessions.items()}
        times = time_interleaved(loads, rounds=rounds, min_seconds=0.5, warmup=2)
        fp32 = np.asarray(times["fp32"])
        row = {"model": name}
        for label, t in times.items():
            row[label] = BATCH / float(np.median(t))
            if label != "fp32":
                row[label + " x"] = float(np.median(fp32 / np.asarray(t)))  # per-round ratios
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | FP32 img/s | plain quantize_static x FP32 | INT8 TensorRT graph img/s | x FP32 "
             "| INT8 CPU graph img/s | x FP32 | goal >= 1.8x |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        met = "yes" if r["int8 (cpu) x"] >= GOAL else "no"
        lines.append(f"| {r['model']} | {r['fp32']:.1f} | {r['plain x']:.2f} | "
                     f"{r['int8 (tensorrt)']:.1f} | {r['int8 (tensorrt) x']:.2f} | "
                     f"{r['int8 (cpu)']:.1f} | {r['int8 (cpu) x']:.2f} | {met} |")
    return "\n".join(lines)


def run(args) -> str:
    """The markdown section for benchmarks/run.py."""
    import onnxruntime

    rounds = getattr(args, "rounds", None) or 7
    start = time.perf_counter()
    rows = measure(rounds=rounds)
    return "\n".join([
        "## INT8 vs FP32 (ONNX Runtime CPU, batch 8)",
        "",
        f"`{COMMAND}` ({rounds} interleaved rounds, medians; ratios are medians of per-round ratios; "
        f"onnxruntime {onnxruntime.__version__}; {time.perf_counter() - start:.0f} s). "
        "`TensorRT graph` is what `pfdeploy quantize` ships for TensorRT (symmetric s8); `CPU graph` is "
        "`--target cpu`, the same quantization re-encoded for ONNX Runtime's x86 kernels; `plain "
        "quantize_static` is onnxruntime's quantizer with its defaults (QDQ, per-channel symmetric s8, "
        "every op type, no pre-processing): the baseline before this work.",
        "",
        table(rows),
    ]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    logging.basicConfig(level=logging.WARNING)
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
