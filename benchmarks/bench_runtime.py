"""Runtime overhead: `pfdeploy.runtime.load(...)` vs plain onnxruntime / OpenVINO on the same ONNX,
and the backend choice behind `load(backend="auto")`.

Overhead: each runtime session is timed against its own engine called directly (the onnxruntime
session's InferenceSession; the OpenVINO session's CompiledModel through an InferRequest with
zero-copy input), so the only difference is the Session layer (input validation, dispatch,
float32 output). Interleaved round by round at batch 1 and 8 on r50_hybrid (224x224, seeded random
weights); the median per-round img/s ratio runtime / plain is reported; the goal is >= 0.98.

Backend choice: FP32 and both INT8 graphs (TensorRT Q/DQ and --target cpu) of r50_hybrid and
vit_s_max at batch 8, each through onnxruntime and openvino, in one interleaved `benchmark` run per
model; the table says which backend was faster and which one `backend="auto"` picks on this CPU.

    flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_runtime.py
    .venv/bin/python benchmarks/bench_runtime.py --no-backends   # overhead tables only
    # on a GPU machine: also the GPU table of benchmarks/bench_gpu.py (or `make gpu-check`)
    .venv/bin/python benchmarks/bench_runtime.py --gpu
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

MODEL = "r50_hybrid"
BATCHES = (1, 8)
GOAL = 0.98
COMMAND = "flock /tmp/pfdeploy-cpu.lock .venv/bin/python benchmarks/bench_runtime.py"
BACKEND_MODELS = ("r50_hybrid", "vit_s_max")
BACKEND_BATCH = 8
GRAPHS = ("fp32", "int8 (tensorrt)", "int8 (cpu)")


def export(name: str) -> Path:
    """r50_hybrid at its registered size, exported once into a temp cache."""
    from pfdeploy.export import onnx_from_model

    path = Path(tempfile.gettempdir()) / "pfdeploy-bench-runtime" / f"{name}.onnx"
    if not path.is_file():
        onnx_from_model(name, path)
    return path


def measure_overhead(path: Path, batches=BATCHES, rounds: int = 61, min_seconds: float = 0.0) -> list[dict]:
    """Rows {batch, runtime, plain (img/s medians), ratio}, timed interleaved one call each per round.

    `plain` is the runtime session's own onnxruntime.InferenceSession (made by the same
    `ort_session_from_onnx` factory, so the same options) called directly with a feed dict: the
    difference is exactly what the runtime adds (input checks, dispatch). A second, separate
    InferenceSession is not used as the baseline: alternating two sessions evicts each one's weights
    from the caches, which moved single calls by 5-40% here and would swamp a 2% goal.
    """
    from pfdeploy.runtime import load
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    rows = []
    with load(path) as session:
        plain = session.inference_session
        separate = ort_session_from_onnx(path)
        for batch in batches:
            x = session.input_spec.example(batch, seed=0)
            feed, outputs = {"input": x}, ["logits"]
            np.testing.assert_array_equal(session(x), separate.run(outputs, feed)[0])  # same graph and work
            rows.append(overhead_row(batch, lambda x=x: session(x), lambda f=feed, o=outputs: plain.run(o, f),
                                     rounds, min_seconds))
    return rows


def overhead_row(batch: int, runtime, plain, rounds: int, min_seconds: float) -> dict:
    """{batch, runtime, plain (img/s medians), ratio}: the two calls timed interleaved, one call each
    per round; ratio = median over rounds of plain time / runtime time (same round, side by side)."""
    from pfdeploy.runtime.timing import time_interleaved

    samples = time_interleaved({"runtime": runtime, "plain": plain}, rounds=rounds, min_seconds=min_seconds,
                               warmup=2)
    ips = {k: batch / float(np.median(v)) for k, v in samples.items()}
    per_round = np.asarray(samples["plain"]) / np.asarray(samples["runtime"])
    return {"batch": batch, **ips, "ratio": float(np.median(per_round))}


def overhead_table(rows: list[dict], plain: str) -> list[str]:
    """Markdown lines: per batch, runtime and plain img/s, their ratio and whether GOAL is met."""
    lines = [f"| batch | runtime img/s | {plain} img/s | ratio runtime/plain | goal met |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        met = "yes" if r["ratio"] >= GOAL else "no"
        lines.append(f"| {r['batch']} | {r['runtime']:.1f} | {r['plain']:.1f} | {r['ratio']:.3f} | {met} |")
    return lines


def overhead_section(rows: list[dict], rounds: int) -> str:
    lines = [
        "## Runtime overhead vs plain ONNX Runtime",
        "",
        f"`pfdeploy.runtime.load()` session vs a plain `onnxruntime.InferenceSession.run` on the same graph "
        f"and options (the runtime session's own InferenceSession, made by `ort_session_from_onnx`, called "
        f"directly; a separately made session is checked to give identical logits); {MODEL}, 224x224, FP32, "
        f"interleaved one call each per round, {rounds} rounds, img/s medians, ratio the median of "
        f"per-round ratios. Goal: ratio >= {GOAL}.",
        "",
        *overhead_table(rows, "plain ORT"),
        "",
        "Why not a second InferenceSession as the baseline: alternating calls between two sessions of the "
        "same graph evicts each one's weights from the caches, which moved single-call times by 5-40% in "
        "trials here, far more than the 2% being measured.",
        "",
        f"Command: `{COMMAND}`",
        "",
    ]
    return "\n".join(lines)


def measure_openvino_overhead(path: Path, batches=BATCHES, rounds: int = 61) -> list[dict]:
    """Rows {batch, runtime, plain, ratio} for the OpenVINO session vs its own CompiledModel.

    `plain` is an InferRequest of the session's CompiledModel called directly with zero-copy input
    (`infer({0: x}, share_inputs=True)`), the fastest plain OpenVINO call; a separately compiled
    model with the same properties is checked to give identical logits.
    """
    from pfdeploy.runtime import load
    from pfdeploy.runtime.openvino_backend import shared_core

    rows = []
    with load(path, backend="openvino") as session:
        plain = session.compiled_model.create_infer_request()
        separate = shared_core().compile_model(str(path), "CPU", session.config).create_infer_request()
        for batch in batches:
            x = session.input_spec.example(batch, seed=0)
            np.testing.assert_array_equal(session(x), separate.infer({0: x}, share_inputs=True)[0])
            rows.append(overhead_row(batch, lambda x=x: session(x),
                                     lambda x=x: plain.infer({0: x}, share_inputs=True), rounds, 0.0))
    return rows


def openvino_overhead_section(rows: list[dict], rounds: int) -> str:
    from pfdeploy._cpu import cpu_summary

    lines = [
        "## Runtime overhead vs plain OpenVINO",
        "",
        f"`load(path, backend=\"openvino\")` session vs an `openvino.InferRequest` of the session's own "
        f"CompiledModel called directly with zero-copy input (`infer({{0: x}}, share_inputs=True)`; a "
        f"separately compiled model is checked to give identical logits); {MODEL}, 224x224, FP32 "
        f"(INFERENCE_PRECISION_HINT f32, PERFORMANCE_HINT LATENCY, threads = cores), interleaved one call "
        f"each per round, {rounds} rounds, img/s medians, ratio the median of per-round ratios. "
        f"Goal: ratio >= {GOAL}. CPU: {cpu_summary()}.",
        "",
        *overhead_table(rows, "plain OpenVINO"),
        "",
        f"Command: `{COMMAND}`",
        "",
    ]
    return "\n".join(lines)


def backend_rows(models=BACKEND_MODELS, batch: int = BACKEND_BATCH, seconds: float = 6.0) -> list[dict]:
    """Per model and graph: img/s through onnxruntime and openvino (one interleaved run per model),
    the speed-up over onnxruntime FP32, the faster backend and the one backend="auto" picks."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_int8 import artifacts

    from pfdeploy.runtime import auto_facts, backend_for, load
    from pfdeploy.runtime.bench import benchmark

    rows = []
    for name in models:
        paths = {graph: path for graph, path in artifacts(name).items() if graph in GRAPHS}
        sessions = [(f"{graph}|{backend}", load(path, backend=backend))
                    for graph, path in paths.items() for backend in ("onnxruntime", "openvino")]
        try:
            report = benchmark(sessions, [batch], seconds, warmup=2)
        finally:
            for _, session in sessions:
                session.close()
        ips = {r["label"]: r["images_per_second"] for r in report["results"]}
        base = ips["fp32|onnxruntime"]
        for graph, path in paths.items():
            ort, ov = ips[f"{graph}|onnxruntime"], ips[f"{graph}|openvino"]
            rows.append({"model": name, "graph": graph, "ort": ort, "ort x": ort / base, "ov": ov,
                         "ov x": ov / base, "fastest": "openvino" if ov > ort else "onnxruntime",
                         "auto": backend_for(path, auto_facts(path))})
    return rows


def backend_section(rows: list[dict], batch: int, seconds: float) -> str:
    from pfdeploy._cpu import cpu_summary, has_vnni

    lines = [
        "## Backend choice for auto: ONNX Runtime vs OpenVINO",
        "",
        f"Each graph of each model through both CPU backends at batch {batch}, 224x224, seeded random weights, "
        f"threads = cores, one interleaved `pfdeploy.runtime.bench.benchmark` run per model ({seconds:g} s per "
        f"target); `x` = img/s over ONNX Runtime FP32 of the same run. INT8 graphs: `pfdeploy quantize` "
        f"(TensorRT Q/DQ graph, and `--target cpu`), 32 digit images, min-max. CPU: {cpu_summary()} "
        f"(VNNI: {'yes' if has_vnni() else 'no'}). `auto` is what `load(path)` picks here "
        "(`pfdeploy.runtime.backend_for`).",
        "",
        "| model | graph | onnxruntime img/s | x | openvino img/s | x | faster | auto picks |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['graph']} | {r['ort']:.1f} | {r['ort x']:.2f} | {r['ov']:.1f} | "
                     f"{r['ov x']:.2f} | {r['fastest']} | {r['auto']} |")
    return "\n".join(lines + ["", f"Command: `{COMMAND}`", ""])


def gpu_section(available: bool) -> str:
    """The GPU table: benchmarks/bench_gpu.py (the PF models vs r50, interleaved), or why it is empty."""
    if not available:
        return "\n".join([
            "## GPU throughput", "",
            "Not measured: no GPU was available to this run. On a GPU machine run `make gpu-check` "
            "(scripts/gpu_check.py: the GPU tests, then benchmarks/bench_gpu.py into docs/gpu-check.md).", "",
        ])
    import bench_gpu

    return "## GPU throughput\n\n" + bench_gpu.markdown(bench_gpu.run_benchmark(2.0)).split("\n", 2)[2]


def run(args) -> str:
    """Markdown section for benchmarks/run.py (and GPU section when --gpu and a GPU is present)."""
    import torch

    rounds = getattr(args, "rounds", None) or 61
    text = overhead_section(measure_overhead(export(MODEL), rounds=rounds), rounds)
    if importlib.util.find_spec("openvino") is None:
        text += "\n## Runtime overhead vs plain OpenVINO\n\nNot measured: OpenVINO is not installed " \
                "(pip install 'pfdeploy[openvino]').\n"
    else:
        text += "\n" + openvino_overhead_section(measure_openvino_overhead(export(MODEL), rounds=rounds), rounds)
        if not getattr(args, "no_backends", False):
            seconds = getattr(args, "backend_seconds", None) or 6.0
            text += "\n" + backend_section(backend_rows(seconds=seconds), BACKEND_BATCH, seconds)
    if getattr(args, "gpu", False):
        text += "\n" + gpu_section(torch.cuda.is_available())
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=61)
    parser.add_argument("--gpu", action="store_true", help="also the GPU table (needs a CUDA GPU)")
    parser.add_argument("--no-backends", action="store_true", help="skip the ONNX Runtime vs OpenVINO table")
    parser.add_argument("--backend-seconds", type=float, default=6.0, help="seconds per target, backend table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
