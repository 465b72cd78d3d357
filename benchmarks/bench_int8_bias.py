"""INT8 graphs with float biases (now) vs INT32 quantized biases (onnxruntime's default, before):
ONNX Runtime CPU speed and trained-fixture accuracy, measured side by side in one run.

TensorRT's ONNX parser rejects the INT32 bias behind a DequantizeLinear that onnxruntime's quantizer
writes by default, so pfdeploy quantizes weights and activations only (`QuantizeBias: False`). This
measures what that costs on ONNX Runtime CPU: for r50_hybrid, vit_s_max and pit_s_max at 224x224,
batch 8, with BatchNorm statistics that are not the identity (seeded; so, like a trained checkpoint,
every convolution keeps a bias after BatchNorm folding), the FP32 graph and the INT8 graphs of both
targets with either bias encoding are timed interleaved, round by round; medians, ratios the medians
of per-round ratios. Then the top-1 of the same four INT8 variants of each trained fixture on its
held-out digits (`tests/fixtures`, 256 calibration images, entropy).

    flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_int8_bias.py
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
MODELS = ("r50_hybrid", "vit_s_max", "pit_s_max")
BATCH = 8
COMMAND = "flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_int8_bias.py"
CALIB = HERE.parent / "tests" / "fixtures" / "digits" / "calib"
CACHE = Path(tempfile.gettempdir()) / "pfdeploy-bench-int8-bias"
VARIANTS = [(target, bias) for target in ("tensorrt", "cpu") for bias in ("int32", "float")]


@contextlib.contextmanager
def biases(kind: str):
    """int8_from_onnx with float biases (pfdeploy's choice) or INT32 ones (onnxruntime's default)."""
    from pfdeploy.calibration import quantize

    original = quantize.qdq_graph
    quantize.qdq_graph = functools.partial(original, quantize_bias=kind == "int32")
    try:
        yield
    finally:
        quantize.qdq_graph = original


def checkpoint_with_biases(name: str) -> Path:
    """Seeded weights whose BatchNorm is not the identity, so the exported convolutions have biases."""
    from pfdeploy.models import create_model

    path = CACHE / f"{name}.pth"
    if not path.exists():
        gen = torch.Generator().manual_seed(0)
        model = create_model(name)
        state = model.state_dict()
        for key, value in state.items():
            if key.endswith(("running_mean", "bias")) and value.is_floating_point():
                state[key] = 0.1 * torch.randn(value.shape, generator=gen)
            elif key.endswith("running_var"):
                state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    return path


def int8_variants(fp32: Path, calib: Path, num_images: int, method: str, stem: str) -> dict[str, Path]:
    """{"<target>, <bias> bias": path} for both targets and both bias encodings (ranges calibrated once)."""
    from pfdeploy.calibration import int8_from_onnx

    out = {}
    for target, bias in VARIANTS:
        path = CACHE / f"{stem}.{target}.{bias}.onnx"
        if not path.exists():
            with biases(bias):
                int8_from_onnx(fp32, calib, path, num_images=num_images, method=method, target=target,
                               cache_dir=CACHE)
        out[f"{target}, {bias} bias"] = path
    return out


def _digest() -> str:
    import hashlib

    import pfdeploy

    digest = hashlib.sha256()
    for path in sorted(Path(pfdeploy.__file__).parent.glob("[ce]*/*.py")):  # calibration/, export/
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def speed(models=MODELS, rounds: int = 7) -> list[dict]:
    """img/s of FP32 and the four INT8 variants per model, and each one's speed-up over FP32."""
    from pfdeploy.export import onnx_from_model
    from pfdeploy.runtime.ort_options import ort_session_from_onnx
    from pfdeploy.runtime.timing import time_interleaved

    rows = []
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 224, 224)).astype(np.float32)
    for name in models:
        stem = f"{name}_{_digest()}"
        fp32 = CACHE / f"{stem}.fp32.onnx"
        if not fp32.exists():
            onnx_from_model(name, fp32, checkpoint=checkpoint_with_biases(name))
        paths = {"fp32": fp32, **int8_variants(fp32, CALIB, 32, "minmax", stem)}
        sessions = {label: ort_session_from_onnx(path) for label, path in paths.items()}
        loads = {label: (lambda s=s: s.run(None, {"input": x})) for label, s in sessions.items()}
        times = time_interleaved(loads, rounds=rounds, min_seconds=0.5, warmup=2)
        base = np.asarray(times["fp32"])
        row = {"model": name, "fp32": BATCH / float(np.median(base))}
        for label, t in times.items():
            if label != "fp32":
                row[label] = float(np.median(base / np.asarray(t)))
        for target in ("tensorrt", "cpu"):  # float-bias graph vs int32-bias graph, same rounds
            row[f"{target} float/int32"] = float(np.median(
                np.asarray(times[f"{target}, int32 bias"]) / np.asarray(times[f"{target}, float bias"])))
        rows.append(row)
    return rows


def accuracy() -> list[dict]:
    """Top-1 (%) of FP32 and the four INT8 variants of every trained fixture on its held-out images."""
    from pfdeploy.calibration import load_labeled
    from pfdeploy.calibration.fixtures import get_fixture, list_fixtures
    from pfdeploy.export import onnx_from_model
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    rows = []
    for name in list_fixtures():
        fx = get_fixture(name)
        fp32 = CACHE / f"{name}_{_digest()}.fp32.onnx"
        if not fp32.exists():
            onnx_from_model(fx.model, fp32, checkpoint=fx.checkpoint, num_classes=fx.num_classes,
                            overrides=fx.overrides, preprocess=fx.preprocess)
        images, labels, _ = load_labeled(fx.val_dir, fx.preprocess)
        row = {"fixture": name, "images": len(labels)}
        paths = {"fp32": fp32, **int8_variants(fp32, fx.calib_dir, 256, "entropy", f"{name}_{_digest()}")}
        for label, path in paths.items():
            session = ort_session_from_onnx(path)
            preds = np.concatenate([session.run(None, {"input": images[i:i + 100]})[0].argmax(1)
                                    for i in range(0, len(images), 100)])
            row[label] = 100.0 * float(np.mean(preds == labels))
        rows.append(row)
    return rows


def tables(speed_rows: list[dict], accuracy_rows: list[dict]) -> str:
    labels = [f"{t}, {b} bias" for t, b in VARIANTS]
    lines = ["| model | FP32 img/s | " + " | ".join(f"{label} x FP32" for label in labels)
             + " | TensorRT graph float/int32 | CPU graph float/int32 |",
             "|" + " --- |" * (len(labels) + 4)]
    for r in speed_rows:
        lines.append(f"| {r['model']} | {r['fp32']:.1f} | " + " | ".join(f"{r[label]:.2f}" for label in labels)
                     + f" | {r['tensorrt float/int32']:.3f} | {r['cpu float/int32']:.3f} |")
    lines += ["", "| fixture | images | FP32 top-1 | " + " | ".join(labels) + " |", "|" + " --- |" * (len(labels) + 3)]
    for r in accuracy_rows:
        lines.append(f"| {r['fixture']} | {r['images']} | {r['fp32']:.2f} | "
                     + " | ".join(f"{r[label]:.2f}" for label in labels) + " |")
    return "\n".join(lines)


def run(args) -> str:
    import onnxruntime

    from pfdeploy._cpu import cpu_summary

    rounds = getattr(args, "rounds", None) or 7
    start = time.perf_counter()
    speed_rows, accuracy_rows = speed(rounds=rounds), accuracy()
    return "\n".join([
        "### INT8 biases: float (TensorRT takes it) vs INT32 (onnxruntime's default)",
        "",
        f"`{COMMAND}` ({rounds} interleaved rounds, batch 8, 224x224, medians; ratios are medians of "
        f"per-round ratios; {cpu_summary()}; onnxruntime {onnxruntime.__version__}; "
        f"{time.perf_counter() - start:.0f} s). `float/int32` > 1 means the float-bias graph is faster.",
        "",
        tables(speed_rows, accuracy_rows),
    ]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    logging.basicConfig(level=logging.WARNING)
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
