"""GPU benchmark: the PF models against ResNet-50 on the torch CUDA backend, measured side by side.

The five headline models (r50, r50_max, r50_hybrid, vit_s_max, pit_s_max) at 224x224 with seeded
random weights (speed does not depend on the values), FP32 and FP16, channels-last, CUDA graphs, at
batch 1 and 256. For each precision all five sessions are timed in one `pfdeploy.runtime.bench.benchmark`
run, interleaved round by round, end-to-end (host array in, host logits out) and device-only (input
already on the GPU). Each model's speed is reported relative to r50 in the same run, beside the
paper's GPU speed-ups (R50-max 8.7/6.8 = 1.28x, R50-hybrid 8.7/7.3 = 1.19x over R50).

    python3 benchmarks/bench_gpu.py --json docs/gpu-check.json --markdown docs/gpu-check.md
    # or `make gpu-check`, which runs the GPU tests first (scripts/gpu_check.py)
"""

from __future__ import annotations

import argparse
import logging
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("r50", "r50_max", "r50_hybrid", "vit_s_max", "pit_s_max")
PRECISIONS = ("fp32", "fp16")
BATCHES = (1, 256)
BASELINE = "r50"
PAPER_SPEEDUP = {"r50_max": 8.7 / 6.8, "r50_hybrid": 8.7 / 7.3}  # GPU speed-ups over R50 in the paper
SCHEMA = "pfdeploy.gpu-bench/1"


def _driver_version() -> str | None:
    """The NVIDIA driver version (nvidia-smi), or the CUDA driver API version via cuda-python."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    try:
        from cuda.bindings import runtime

        status, version = runtime.cudaDriverGetVersion()
        return f"CUDA driver API {version // 1000}.{(version % 1000) // 10}" if int(status) == 0 else None
    except ImportError:
        return None


def gpu_environment(device: int = 0) -> dict:
    """GPU, driver and software versions the numbers were measured with."""
    import torch

    props = torch.cuda.get_device_properties(device)
    try:
        from importlib.metadata import version

        bindings = version("cuda-bindings")
    except Exception:  # noqa: BLE001 - not installed, or no metadata
        bindings = None
    return {
        "gpu": torch.cuda.get_device_name(device),
        "gpu_count": torch.cuda.device_count(),
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "driver": _driver_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cuda_bindings": bindings,
        "python": platform.python_version(),
    }


def measure(models=MODELS, precisions=PRECISIONS, batches=BATCHES, seconds: float = 2.0, warmup: int = 5,
            say=print) -> dict:
    """{precision: pfdeploy.bench/1 report} of the torch CUDA sessions of `models`, one interleaved run each."""
    import torch

    from pfdeploy.runtime import load
    from pfdeploy.runtime.bench import benchmark

    reports = {}
    for precision in precisions:
        say(f"[gpu-check] {precision}: opening {', '.join(models)} (224x224, random weights, channels-last, "
            f"CUDA graphs)")
        torch.manual_seed(0)
        sessions = [(name, load(name, device="cuda", precision=precision, channels_last=True, cuda_graph=True))
                    for name in models]
        try:
            say(f"[gpu-check] {precision}: timing batch {', '.join(map(str, batches))}, interleaved, "
                f"about {seconds:g} s per model, mode and batch")
            reports[precision] = benchmark(sessions, batches, seconds=seconds, warmup=warmup)
        finally:
            for _, session in sessions:
                session.close()
            torch.cuda.empty_cache()
    return reports


def rows_from_reports(reports: dict) -> list[dict]:
    """One row per (model, precision, batch, mode) with img/s, p50 and the speed relative to r50."""
    rows = []
    for precision, report in reports.items():
        results = [r for r in report["results"] if "skipped" not in r]
        base = {(r["batch"], r["mode"]): r["images_per_second"] for r in results if r["label"] == BASELINE}
        for r in results:
            ref = base.get((r["batch"], r["mode"]))
            rows.append({
                "model": r["label"], "precision": precision, "batch": r["batch"], "mode": r["mode"],
                "images_per_second": r["images_per_second"], "p50_ms": r["latency_ms"]["p50"],
                "speed_vs_r50": None if not ref else r["images_per_second"] / ref,
                "paper_speed_vs_r50": PAPER_SPEEDUP.get(r["label"]),
            })
    return rows


def markdown(result: dict) -> str:
    """The docs/gpu-check.md text of a gpu-check result dict."""
    env = result["environment"]
    lines = [
        "# GPU check",
        "",
        f"Measured {result['created']} by `{result['command']}` on **{env['gpu']}** (compute capability "
        f"{env['compute_capability']}, {env['gpu_memory_gib']} GiB), driver {env['driver']}, torch {env['torch']} "
        f"(CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), "
        f"cuda-bindings {env['cuda_bindings']}, Python {env['python']}.",
        "",
    ]
    tests = result.get("tests")
    if tests:
        lines += [f"Tests: `{tests['command']}` -> exit {tests['exit_code']}: {tests['summary']}", ""]
    lines += [
        "torch CUDA backend, 224x224, random weights, channels-last, CUDA graphs, FP32 without TF32 "
        f"(the session's default; tf32={result.get('settings', {}).get('tf32')}); per precision all models "
        "timed in one interleaved run (pfdeploy.runtime.bench.benchmark). end_to_end: host array in, host "
        "logits out; device: input already on the GPU. `vs r50`: img/s over r50's in the same run, precision, "
        "batch and mode; `paper`: the paper's GPU speed-up over R50.",
        "",
        "| model | precision | batch | mode | img/s | p50 ms | vs r50 | paper |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        rel = "-" if r["speed_vs_r50"] is None else f"{r['speed_vs_r50']:.2f}x"
        paper = "-" if r["paper_speed_vs_r50"] is None else f"{r['paper_speed_vs_r50']:.2f}x"
        lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['mode']} | "
                     f"{r['images_per_second']:.1f} | {r['p50_ms']:.2f} | {rel} | {paper} |")
    return "\n".join(lines) + "\n"


def run_benchmark(seconds: float, models=MODELS, batches=BATCHES, command: str = "", say=print) -> dict:
    """Measure and package everything docs/gpu-check.json holds (without the test results)."""
    reports = measure(models, PRECISIONS, batches, seconds=seconds, say=say)
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": gpu_environment(),
        "settings": {"models": list(models), "precisions": list(PRECISIONS), "batches": list(batches),
                     "seconds": seconds, "img_size": 224, "weights": "random (seeded)", "channels_last": True,
                     "cuda_graph": True, "tf32": False},
        "rows": rows_from_reports(reports),
        "bench": reports,
    }


def write_result(result: dict, json_path: Path | None, md_path: Path | None) -> None:
    """Write the result as JSON and markdown, atomically."""
    from pfdeploy._io import write_bytes_atomic, write_json_atomic

    if json_path is not None:
        write_json_atomic(json_path, result)
    if md_path is not None:
        write_bytes_atomic(md_path, markdown(result).encode())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per model, mode and batch")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registered models (r50 first)")
    parser.add_argument("--json", type=Path, help="write the result JSON here")
    parser.add_argument("--markdown", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: error: no CUDA GPU visible to PyTorch; run on a GPU machine", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    result = run_benchmark(args.seconds, tuple(m.strip() for m in args.models.split(",")))
    write_result(result, args.json, args.markdown)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
