"""OpenVINO and ONNX Runtime on this CPU: FP32, BF16 and pfdeploy's one INT8 graph, with NNCF as the peer.

For r50, r50_max, r50_hybrid, vit_s_max and pit_s_max (224x224, seeded random weights: speed does
not depend on the values) at batch 1 and 8, each model's targets are timed interleaved round by
round in one run (pfdeploy.runtime.timing), medians reported:

- `ORT fp32`: the FP32 export through pfdeploy's onnxruntime backend (the baseline of every ratio);
- `OV f32` / `OV bf16`: the same file through pfdeploy's openvino backend (bf16 is skipped, with
  the reason, on CPUs without AVX512-BF16 or AMX);
- `INT8 ORT` / `INT8 OV`: pfdeploy's one INT8 graph (`pfdeploy quantize`, the TensorRT Q/DQ graph)
  through each backend; `INT8-cpu ORT`: the `--target cpu` re-encoding through onnxruntime;
- `NNCF OV`: the peer, `nncf.quantize` of the same FP32 model on the same calibration images,
  compiled by OpenVINO with the same properties as pfdeploy's openvino backend.

Then the trained fixtures' top-1 on tests/fixtures/digits/val for every INT8 variant (pfdeploy's
on ORT and on OpenVINO, NNCF's) and for bf16, each INT8 graph calibrated on the fixture's 256
calibration images. NNCF is a bench-only dependency (`pip install -e '.[bench]'`).

    flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_openvino.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = ("r50", "r50_max", "r50_hybrid", "vit_s_max", "pit_s_max")
BATCHES = (1, 8)
GOAL_X_FP32, GOAL_X_NNCF, GOAL_BF16 = 3.0, 1.0, 1.8
GOAL_MODELS = ("r50", "r50_hybrid", "vit_s_max")
COMMAND = "flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_openvino.py"
CALIB = HERE.parent / "tests" / "fixtures" / "digits" / "calib"
SPEED_CALIB_IMAGES = 32  # the placement, not the ranges, decides the speed (as in bench_int8)
FIXTURE_CALIB_IMAGES = 256  # what tests/calibration/test_quantize.py calibrates the fixtures with
CACHE = Path(tempfile.gettempdir()) / "pfdeploy-bench-openvino"
TARGETS = ("ORT fp32", "OV f32", "OV bf16", "INT8 ORT", "INT8-cpu ORT", "INT8 OV", "NNCF OV")

log = logging.getLogger("bench_openvino")


def bf16_skip_reason() -> str | None:
    """None when this CPU computes BF16 natively, else why the bf16 rows are not measured."""
    from pfdeploy._cpu import cpu_summary, has_bf16

    if has_bf16():
        return None
    return f"not measured: {cpu_summary()} has neither AVX512-BF16 nor AMX (OpenVINO would compute f32)"


def nncf_version() -> str:
    """The installed NNCF version, or a line saying how to install it."""
    try:
        import nncf
    except ImportError:
        return "not installed (pip install -e '.[bench]')"
    return nncf.__version__


def nncf_from_onnx(fp32: Path, inputs: np.ndarray, out_xml: Path, **options) -> Path:
    """The peer: `nncf.quantize` of the FP32 ONNX read by OpenVINO, on `inputs` (one image per item,
    all of them used), saved as OpenVINO IR. `options` go to nncf.quantize (e.g. model_type)."""
    import nncf
    import openvino as ov

    from pfdeploy.runtime.openvino_backend import shared_core

    model = shared_core().read_model(str(fp32))
    dataset = nncf.Dataset([inputs[i:i + 1] for i in range(len(inputs))])
    with contextlib.redirect_stdout(io.StringIO()):  # progress bars
        quantized = nncf.quantize(model, dataset, subset_size=len(inputs), **options)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out_xml))
    return out_xml


def compile_plain(path: Path | str):
    """An OpenVINO IR compiled with exactly the properties pfdeploy's openvino backend uses for fp32."""
    from pfdeploy.runtime.openvino_backend import compile_config, shared_core

    return shared_core().compile_model(str(path), "CPU", compile_config("fp32"))


def ir_runner(path: Path):
    """callable(x) -> logits of an OpenVINO IR compiled as pfdeploy's backend compiles fp32 graphs."""
    compiled = compile_plain(path)
    return lambda x: compiled(x)[0]


def calibration_inputs(fp32: Path, source: Path, num_images: int) -> np.ndarray:
    """The calibration images exactly as pfdeploy quantize preprocesses them (same order and seed)."""
    from pfdeploy._onnxfile import load_onnx
    from pfdeploy.calibration.quantize import calibration_set, preprocess_of

    pre, fmt = preprocess_of(load_onnx(fp32, external_data=False), fp32)
    return calibration_set(source, pre, fmt, num_images=num_images, seed=0).inputs


def _code_digest() -> str:
    """Hash of the calibration code, so cached INT8 graphs are remade when it changes."""
    import hashlib

    import pfdeploy.calibration

    digest = hashlib.sha256()
    for path in sorted(Path(pfdeploy.calibration.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def int8_artifacts(fp32: Path, source: Path, num_images: int, method: str, tag: str,
                   nncf_options: dict | None = None) -> dict[str, Path]:
    """{"tensorrt", "cpu", "nncf"}: pfdeploy's two INT8 graphs and NNCF's IR of `fp32`, made once and cached."""
    from pfdeploy.calibration import int8_from_onnx

    stem = f"{fp32.stem}.{_code_digest()}.{tag}"
    out = {}
    for target in ("tensorrt", "cpu"):
        path = CACHE / f"{stem}.int8-{target}.onnx"
        if not path.exists():
            int8_from_onnx(fp32, source, path, num_images=num_images, method=method, target=target,
                           cache_dir=CACHE)
        out[target] = path
    nncf_tag = "-".join(f"{k}{v}" for k, v in sorted((nncf_options or {}).items()))
    out["nncf"] = CACHE / f"{fp32.stem}.{tag}.nncf{nncf_tag}.xml"
    if not out["nncf"].exists():
        nncf_from_onnx(fp32, calibration_inputs(fp32, source, num_images), out["nncf"], **(nncf_options or {}))
    return out


def sessions_for(name: str) -> dict[str, object]:
    """{target: callable(x) -> logits} of one model; a skipped target maps to the reason (a str)."""
    sys.path.insert(0, str(HERE))
    from bench_fp32 import export_cached

    from pfdeploy.runtime import load

    fp32 = export_cached(name)
    int8 = int8_artifacts(fp32, CALIB, SPEED_CALIB_IMAGES, "minmax", f"speed{SPEED_CALIB_IMAGES}")
    reason = bf16_skip_reason()
    return {
        "ORT fp32": load(fp32, backend="onnxruntime"),
        "OV f32": load(fp32, backend="openvino", precision="fp32"),
        "OV bf16": reason or load(fp32, backend="openvino", precision="bf16"),
        "INT8 ORT": load(int8["tensorrt"], backend="onnxruntime"),
        "INT8-cpu ORT": load(int8["cpu"], backend="onnxruntime"),
        "INT8 OV": load(int8["tensorrt"], backend="openvino"),
        "NNCF OV": ir_runner(int8["nncf"]),
    }


def measure_speed(models=MODELS, batches=BATCHES, rounds: int = 5, min_seconds: float = 0.4) -> list[dict]:
    """One row per (model, batch): img/s of every target (interleaved per model), ratios per round."""
    from pfdeploy.runtime.timing import time_interleaved

    rows = []
    for name in models:
        runners = sessions_for(name)
        skipped = {k: v for k, v in runners.items() if isinstance(v, str)}
        live = {k: v for k, v in runners.items() if not isinstance(v, str)}
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            times = time_interleaved({k: (lambda f=f, x=x: f(x)) for k, f in live.items()}, rounds=rounds,
                                     min_seconds=min_seconds, warmup=1)
            base, peer = np.asarray(times["ORT fp32"]), np.asarray(times["NNCF OV"])
            row = {"model": name, "batch": batch, "skipped": skipped}
            for k, t in times.items():
                t = np.asarray(t)
                row[k] = {"ips": batch / float(np.median(t)), "x_fp32": float(np.median(base / t)),
                          "x_nncf": float(np.median(peer / t))}
            rows.append(row)
        for runner in live.values():
            with contextlib.suppress(AttributeError):
                runner.close()
    return rows


def _top1(predict, images: np.ndarray, labels: np.ndarray) -> float:
    preds = np.concatenate([np.asarray(predict(images[i:i + 100])).argmax(1) for i in range(0, len(images), 100)])
    return 100.0 * float(np.mean(preds == labels))


def measure_accuracy() -> list[dict]:
    """Top-1 (%) of every fixture on its held-out digits: FP32, pfdeploy INT8 on ORT/OV, NNCF, bf16."""
    from pfdeploy.calibration import load_labeled
    from pfdeploy.calibration.fixtures import get_fixture, list_fixtures
    from pfdeploy.export import onnx_from_model
    from pfdeploy.models import get_config
    from pfdeploy.runtime import load

    sys.path.insert(0, str(HERE))
    from bench_fp32 import _source_digest

    rows = []
    for name in list_fixtures():
        fx = get_fixture(name)
        fp32 = CACHE / f"{name}_{_source_digest()}.fp32.onnx"  # remade when the model or export code changes
        if not fp32.exists():
            onnx_from_model(fx.model, fp32, checkpoint=fx.checkpoint, num_classes=fx.num_classes,
                            overrides=fx.overrides, preprocess=fx.preprocess)
        images, labels, _ = load_labeled(fx.val_dir, fx.preprocess)
        int8 = int8_artifacts(fp32, fx.calib_dir, FIXTURE_CALIB_IMAGES, "entropy", f"fixture{FIXTURE_CALIB_IMAGES}")
        row = {"fixture": name, "images": len(labels)}
        for label, path, backend in (("FP32 ORT", fp32, "onnxruntime"), ("OV f32", fp32, "openvino"),
                                     ("INT8 ORT", int8["tensorrt"], "onnxruntime"),
                                     ("INT8-cpu ORT", int8["cpu"], "onnxruntime"),
                                     ("INT8 OV", int8["tensorrt"], "openvino")):
            with load(path, backend=backend) as session:
                row[label] = _top1(session, images, labels)
        row["NNCF OV"] = _top1(ir_runner(int8["nncf"]), images, labels)
        if get_config(fx.model).family != "resnet":  # NNCF's documented option for transformers
            import nncf

            xml = CACHE / f"{fp32.stem}.nncf-transformer.xml"
            if not xml.exists():
                nncf_from_onnx(fp32, calibration_inputs(fp32, fx.calib_dir, FIXTURE_CALIB_IMAGES), xml,
                               model_type=nncf.ModelType.TRANSFORMER)
            row["NNCF OV (model_type=TRANSFORMER)"] = _top1(ir_runner(xml), images, labels)
        reason = bf16_skip_reason()
        if reason:
            row["OV bf16"] = reason
        else:
            with load(fp32, backend="openvino", precision="bf16") as session:
                row["OV bf16"] = _top1(session, images, labels)
        rows.append(row)
    return rows


def speed_table(rows: list[dict]) -> str:
    head = ["| model | batch |", "| --- | --- |"]
    for t in TARGETS:
        head[0] += f" {t} img/s (x fp32) |"
        head[1] += " --- |"
    head[0] += " INT8 OV x NNCF |"
    head[1] += " --- |"
    lines = list(head)
    for r in rows:
        cells = [f"| {r['model']} | {r['batch']} |"]
        for t in TARGETS:
            cells.append(" skipped |" if t in r["skipped"] else f" {r[t]['ips']:.1f} ({r[t]['x_fp32']:.2f}x) |")
        cells.append(f" {r['INT8 OV']['x_nncf']:.2f}x |")
        lines.append("".join(cells))
    return "\n".join(lines)


def accuracy_table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("fixture", "images")]
    extra = sorted({k for r in rows for k in r} - set(keys) - {"fixture", "images"})
    keys += extra
    lines = ["| fixture | images | " + " | ".join(keys) + " |", "| --- | --- |" + " --- |" * len(keys)]
    for r in rows:
        cells = [r.get(k, "-") for k in keys]
        text = [("skipped" if isinstance(c, str) and c != "-" else c) if not isinstance(c, float) else f"{c:.2f}"
                for c in cells]
        lines.append(f"| {r['fixture']} | {r['images']} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def goals(speed: list[dict], accuracy: list[dict]) -> list[str]:
    """Issue 11's goals, each met or not on this machine, from this run's numbers."""
    out = []
    for r in speed:
        if r["batch"] != 8 or r["model"] not in GOAL_MODELS:
            continue
        best = max(r["INT8 OV"]["x_fp32"], r["INT8 ORT"]["x_fp32"], r["INT8-cpu ORT"]["x_fp32"])
        out.append(f"- {r['model']}: pfdeploy INT8 >= {GOAL_X_FP32}x ORT fp32: "
                   f"{'met' if best >= GOAL_X_FP32 else 'not met'} (best {best:.2f}x); INT8 OV >= "
                   f"{GOAL_X_NNCF}x NNCF: {'met' if r['INT8 OV']['x_nncf'] >= GOAL_X_NNCF else 'not met'} "
                   f"({r['INT8 OV']['x_nncf']:.2f}x)")
    for a in accuracy:
        for label in ("INT8 ORT", "INT8 OV"):
            ok = a[label] >= a["FP32 ORT"] - 1.0 and a[label] >= a["NNCF OV"]
            out.append(f"- {a['fixture']} {label} top-1 within 1 point of FP32 and >= NNCF: "
                       f"{'met' if ok else 'not met'} ({a[label]:.2f} vs FP32 {a['FP32 ORT']:.2f}, "
                       f"NNCF {a['NNCF OV']:.2f})")
    reason = bf16_skip_reason()
    out.append(f"- BF16 >= {GOAL_BF16}x ORT fp32, top-1 within 0.2: " + (reason or "see the OV bf16 column"))
    return out


def versions() -> str:
    import onnxruntime
    import openvino

    from pfdeploy._cpu import cpu_summary

    return (f"{cpu_summary()}; onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__}, "
            f"nncf {nncf_version()}")


def run(args) -> str:
    """The markdown section for benchmarks/run.py."""
    rounds = getattr(args, "rounds", None) or 5
    models = tuple(getattr(args, "models", None) or MODELS)
    start = time.perf_counter()
    speed = measure_speed(models, rounds=rounds)
    accuracy = measure_accuracy()
    return "\n".join([
        "## OpenVINO and pfdeploy's one INT8 graph vs NNCF (CPU)",
        "",
        f"`{COMMAND}` ({rounds} interleaved rounds per model, medians; ratios are medians of per-round "
        f"ratios; {time.perf_counter() - start:.0f} s). {versions()}. 224x224, seeded random weights; INT8 "
        f"graphs calibrated on {SPEED_CALIB_IMAGES} digit images (min-max), NNCF on the same images. "
        "`INT8` = the TensorRT Q/DQ graph (`pfdeploy quantize`), `INT8-cpu` = `--target cpu`.",
        "",
        speed_table(speed),
        "",
        f"Fixture top-1 (%) on the held-out digits, INT8 calibrated on {FIXTURE_CALIB_IMAGES} images "
        "(pfdeploy: entropy; NNCF: its defaults):",
        "",
        accuracy_table(accuracy),
        "",
        *([f"OV bf16: {bf16_skip_reason()}", ""] if bf16_skip_reason() else []),
        "Issue 11 goals on this machine (batch 8):",
        "",
        *goals(speed, accuracy),
    ]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", type=lambda s: s.split(","), default=MODELS, help="comma-separated subset")
    logging.basicConfig(level=logging.WARNING)
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
