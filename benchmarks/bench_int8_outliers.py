"""INT8 with outlier channels: pfdeploy (default, --max-drop) against NNCF (quantize, quantize_with_accuracy_control).

The trained fixtures (tests/fixtures/trained) and their outlier variants (tests/outlier_fixtures.py: a
few channels of BatchNorm/LayerNorm outputs multiplied by a scale, the next layer's inputs divided by
it, so the FP32 function is unchanged) are quantized on the same 256 calibration images and judged on
the 400 labelled held-out digits:

- `pfdeploy default`: `int8_from_onnx` with its defaults (equalization, bias correction for ResNets,
  entropy ranges; the TensorRT Q/DQ graph), top-1 on ONNX Runtime and on OpenVINO, `verify` on the
  held-out images (its INT8 tolerances), seconds to quantize (calibration included, no cache);
- `pfdeploy --max-drop 0.5`: the same with the accuracy budget on the held-out images, the tensors it
  kept float and what they cost in speed (its own side-by-side measurement);
- `no equalization`: the quantizer before issue 17 (no equalization, no bias correction), alone and
  with `--max-drop 0.5` (the budget doing all the work: what keeping tensors float costs in speed);
- `NNCF quantize`: `nncf.quantize` of the same FP32 ONNX read by OpenVINO, defaults, same images;
- `NNCF accuracy control`: `nncf.quantize_with_accuracy_control(max_drop=0.005)` (0.5 point, absolute,
  top-1 on the same held-out images), the peer of `--max-drop 0.5`.

A second table is the measurement the defaults were chosen by: with equalization, every range method
(entropy, minmax, percentile) with and without bias correction, top-1 and logit SQNR against FP32.

    flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_int8_outliers.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMAND = "flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_int8_outliers.py"
CACHE = Path(tempfile.gettempdir()) / "pfdeploy-bench-int8-outliers"
CALIB_IMAGES = 256
MAX_DROP = 0.5
METHODS = ("entropy", "minmax", "percentile")

log = logging.getLogger("bench_int8_outliers")


def cases() -> dict[str, object]:
    """{label: OutlierSpec or fixture name}: each fixture as trained, then every outlier case."""
    sys.path.insert(0, str(ROOT / "tests"))
    from outlier_fixtures import CASES

    from pfdeploy.calibration.fixtures import list_fixtures

    return {**{name: name for name in list_fixtures()}, **CASES}


def fp32_of(label: str, case) -> tuple[Path, Path, str]:
    """(FP32 ONNX, checkpoint, fixture name) of a case, exported once per model/export source."""
    sys.path.insert(0, str(HERE))
    from bench_fp32 import _source_digest
    from outlier_fixtures import outlier_checkpoint

    from pfdeploy.calibration.fixtures import get_fixture
    from pfdeploy.export import onnx_from_model

    name = case if isinstance(case, str) else case.fixture
    fx = get_fixture(name)
    CACHE.mkdir(parents=True, exist_ok=True)
    checkpoint = fx.checkpoint if isinstance(case, str) else outlier_checkpoint(case, CACHE / f"{label}.pth")
    path = CACHE / f"{label}_{_source_digest()}.fp32.onnx"
    if not path.exists():
        onnx_from_model(fx.model, path, checkpoint=checkpoint, num_classes=fx.num_classes, overrides=fx.overrides,
                        preprocess=fx.preprocess)
    return path, checkpoint, name


def _ort_logits(path: Path, images: np.ndarray) -> np.ndarray:
    from pfdeploy.runtime import load

    with load(path, backend="onnxruntime") as session:
        return np.concatenate([session(images[i:i + 100]) for i in range(0, len(images), 100)])


def _ov_logits(path: Path, images: np.ndarray) -> np.ndarray:
    from pfdeploy.runtime import load

    with load(path, backend="openvino") as session:
        return np.concatenate([session(images[i:i + 100]) for i in range(0, len(images), 100)])


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.argmax(1) == labels))


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2)))


def _quantize(fp32: Path, calib: Path, out: Path, **options) -> tuple[Path, float]:
    from pfdeploy.calibration import int8_from_onnx

    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=CACHE))  # calibration included in every timing
    start = time.perf_counter()
    path = int8_from_onnx(fp32, calib, out, num_images=CALIB_IMAGES, cache_dir=cache, **options)
    return path, time.perf_counter() - start


def _nncf_dataset(inputs: np.ndarray):
    import nncf

    return nncf.Dataset([inputs[i:i + 1] for i in range(len(inputs))])


def nncf_quantize(fp32: Path, inputs: np.ndarray, images: np.ndarray, labels: np.ndarray,
                  accuracy_control: bool) -> tuple[float, float]:
    """(top-1 on OpenVINO, seconds) of NNCF's INT8 model of `fp32` on the calibration `inputs`."""
    import nncf
    import openvino as ov

    from pfdeploy.runtime.openvino_backend import compile_config, shared_core

    core = shared_core()
    model = core.read_model(str(fp32))
    config = compile_config("fp32")

    def validate(compiled, items) -> float:
        compiled = compiled if isinstance(compiled, ov.CompiledModel) else core.compile_model(compiled, "CPU", config)
        return float(np.mean([int(compiled(x)[0].argmax()) == int(y) for x, y in items]))

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # progress bars
        if accuracy_control:
            validation = nncf.Dataset([(images[i:i + 1], labels[i]) for i in range(len(images))])
            quantized = nncf.quantize_with_accuracy_control(model, _nncf_dataset(inputs), validation, validate,
                                                            max_drop=MAX_DROP / 100, subset_size=len(inputs))
        else:
            quantized = nncf.quantize(model, _nncf_dataset(inputs), subset_size=len(inputs))
    seconds = time.perf_counter() - start
    compiled = core.compile_model(quantized, "CPU", config)
    logits = np.concatenate([compiled(images[i:i + 100])[0] for i in range(0, len(images), 100)])
    return _top1(logits, labels), seconds


def measure_case(label: str, case, with_nncf: bool = True) -> dict:
    """Every variant of one case: top-1 (ORT / OV), verify, seconds, what the budget kept float."""
    from pfdeploy.calibration import load_labeled
    from pfdeploy.calibration.fixtures import get_fixture
    from pfdeploy.export import read_metadata
    from pfdeploy.runtime.verify import verify_artifact

    sys.path.insert(0, str(HERE))
    from bench_openvino import calibration_inputs

    fp32, checkpoint, name = fp32_of(label, case)
    fx = get_fixture(name)
    images, labels, _ = load_labeled(fx.val_dir, fx.preprocess)
    row = {"case": label, "fixture": name, "images": len(labels), "fp32": _top1(_ort_logits(fp32, images), labels)}
    plain = {"equalize": False, "bias_correction": False}
    budget = {"val_data": fx.val_dir, "max_drop": MAX_DROP}
    variants = {"default": {}, "max_drop": budget, "no_equalization": plain,
                "no_equalization_max_drop": {**plain, **budget}}
    for key, options in variants.items():
        path, seconds = _quantize(fp32, fx.calib_dir, CACHE / f"{label}.{key}.int8.onnx", **options)
        entry = {"ort": _top1(_ort_logits(path, images), labels), "ov": _top1(_ov_logits(path, images), labels),
                 "seconds": seconds}
        if key in ("default", "max_drop"):
            entry["verify"] = verify_artifact(path, checkpoint=checkpoint, data=fx.val_dir, samples=32).passed
        meta = read_metadata(path)
        if "pfdeploy.int8_budget" in meta:
            budget = json.loads(meta["pfdeploy.int8_budget"])
            entry["kept_float"] = len(budget["tensors"])
            entry["speed"] = (budget.get("speed") or {}).get("after_over_before")
        row[key] = entry
    if with_nncf:
        inputs = calibration_inputs(fp32, fx.calib_dir, CALIB_IMAGES)
        for key, control in (("nncf", False), ("nncf_ac", True)):
            top1, seconds = nncf_quantize(fp32, inputs, images, labels, control)
            row[key] = {"ov": top1, "seconds": seconds}
    return row


def measure_ablation(label: str, case) -> dict:
    """Top-1 (ONNX Runtime) and logit SQNR against FP32 of every range method with and without bias
    correction, equalized, on one case."""
    from pfdeploy.calibration import load_labeled
    from pfdeploy.calibration.fixtures import get_fixture

    fp32, _, name = fp32_of(label, case)
    fx = get_fixture(name)
    images, labels, _ = load_labeled(fx.val_dir, fx.preprocess)
    ref = _ort_logits(fp32, images)
    row = {"case": label, "fp32": _top1(ref, labels)}
    for method in METHODS:
        for correction in (False, True):
            path, _ = _quantize(fp32, fx.calib_dir, CACHE / f"{label}.ablation.int8.onnx", method=method,
                                bias_correction=correction)
            got = _ort_logits(path, images)
            row[f"{method} bc{int(correction)}"] = (_top1(got, labels), _sqnr(ref, got))
    return row


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def comparison_table(rows: list[dict]) -> str:
    lines = ["| case | FP32 | pfdeploy default ORT / OV (verify, s) | pfdeploy --max-drop 0.5 ORT / OV (verify, "
             "float, speed, s) | no equalization ORT / OV | no equalization, --max-drop 0.5 ORT / OV (float, speed, "
             "s) | NNCF quantize OV (s) | NNCF accuracy control 0.5 OV (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    verdict = {True: "PASS", False: "FAIL"}

    def speed(entry):
        return "-" if entry.get("speed") is None else f"{entry['speed']:.2f}x"

    for r in rows:
        d, m, n, nm = r["default"], r["max_drop"], r["no_equalization"], r["no_equalization_max_drop"]
        cells = [r["case"], _pct(r["fp32"]),
                 f"{_pct(d['ort'])} / {_pct(d['ov'])} ({verdict[d['verify']]}, {d['seconds']:.1f})",
                 f"{_pct(m['ort'])} / {_pct(m['ov'])} ({verdict[m['verify']]}, {m.get('kept_float', 0)}, {speed(m)}, "
                 f"{m['seconds']:.1f})",
                 f"{_pct(n['ort'])} / {_pct(n['ov'])}",
                 f"{_pct(nm['ort'])} / {_pct(nm['ov'])} ({nm.get('kept_float', 0)}, {speed(nm)}, {nm['seconds']:.1f})"]
        for key in ("nncf", "nncf_ac"):
            cells.append(f"{_pct(r[key]['ov'])} ({r[key]['seconds']:.1f})" if key in r else "not run")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(rows: list[dict]) -> str:
    keys = [f"{m} bc{c}" for m in METHODS for c in (0, 1)]
    lines = ["| case | FP32 | " + " | ".join(k.replace("bc0", "").replace("bc1", "+ bias corr.").strip()
                                               for k in keys) + " |",
             "| --- | --- |" + " --- |" * len(keys)]
    for r in rows:
        lines.append(f"| {r['case']} | {_pct(r['fp32'])} | "
                     + " | ".join(f"{r[k][0]:.2f} ({r[k][1]:.1f} dB)" for k in keys) + " |")
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[str]:
    """Issue 17's "done when", per outlier case, from this run's numbers."""
    out = []
    for r in rows:
        if r["case"] == r["fixture"]:
            continue
        d, m = r["default"], r["max_drop"]
        worst = min(d["ort"], d["ov"])
        peer = r.get("nncf", {}).get("ov")
        ok = worst >= r["fp32"] - 1.0 and d["verify"] and (peer is None or worst >= peer)
        budget = min(m["ort"], m["ov"]) >= r["fp32"] - MAX_DROP and m["verify"]
        out.append(f"- {r['case']}: default within 1.0 of FP32, >= NNCF default, verify PASS: "
                   f"{'met' if ok else 'not met'} ({worst:.2f} vs FP32 {r['fp32']:.2f}, NNCF {_pct(peer)}); "
                   f"--max-drop {MAX_DROP} within {MAX_DROP}: {'met' if budget else 'not met'}")
    return out


def run(args) -> str:
    """The markdown section for benchmarks/run.py."""
    import onnxruntime
    import openvino

    sys.path.insert(0, str(HERE))
    from bench_openvino import nncf_version

    from pfdeploy._cpu import cpu_summary

    with_nncf = not nncf_version().startswith("not installed")
    start = time.perf_counter()
    chosen = cases()
    only = getattr(args, "cases", None)
    if only:
        chosen = {k: v for k, v in chosen.items() if k in only}
    rows = [measure_case(label, case, with_nncf) for label, case in chosen.items()]
    ablation = [] if getattr(args, "no_ablation", False) else [measure_ablation(k, v) for k, v in chosen.items()]
    parts = [
        "## INT8 with outlier channels: pfdeploy vs NNCF",
        "",
        f"`{COMMAND}` ({time.perf_counter() - start:.0f} s). {cpu_summary()}; onnxruntime {onnxruntime.__version__}, "
        f"openvino {openvino.__version__}, nncf {nncf_version()}. Top-1 (%) on the {rows[0]['images']} held-out "
        f"digits; every INT8 model calibrated on the same {CALIB_IMAGES} images; seconds = wall time of the "
        "quantizer (pfdeploy: calibration and equalization included, no range cache). `verify` = `pfdeploy verify` "
        "with --data on the held-out images (INT8 tolerances); `float` = tensors the budget kept float; `speed` = "
        "img/s with them over without (the budget's own measurement, batch 8, the backend pfdeploy picks here).",
        "",
        comparison_table(rows),
        "",
        "Issue 17 goals on this machine:",
        "",
        *goals(rows),
    ]
    if ablation:
        parts += ["", "How the defaults were chosen: equalized, each range method with and without bias correction, "
                  "top-1 on ONNX Runtime (logit SQNR against FP32 in dB):", "", ablation_table(ablation)]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=lambda s: s.split(","), help="comma-separated subset of the case labels")
    parser.add_argument("--no-ablation", action="store_true", help="skip the method / bias-correction table")
    logging.basicConfig(level=logging.WARNING)
    print(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
