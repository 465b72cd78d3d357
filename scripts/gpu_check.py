"""`make gpu-check`: check pfdeploy's GPU paths on a bare CUDA machine and measure the PF models there.

For a machine with an NVIDIA GPU and a preinstalled CUDA build of PyTorch, and no network, no project
venv, no TensorRT and no onnxruntime-gpu: it runs the project from this working tree (PYTHONPATH, no
install) with the Python that runs it.

1. Refuses in one line (exit 2) without a CUDA GPU visible to PyTorch, or without what the tests import.
2. `pytest -m "gpu or tensorrt"`: the torch CUDA backend, the cuda-python memory layer (real streams,
   buffers, CUDA-graph capture and its failure path); the TensorRT tests skip with their reason when
   TensorRT is absent.
3. The GPU benchmark (benchmarks/bench_gpu.py): r50, r50_max, r50_hybrid, vit_s_max, pit_s_max at
   224x224, FP32 and FP16, channels-last, CUDA graphs, batch 1 and 256, interleaved; PF speed vs r50
   beside the paper's R50-max 1.28x and R50-hybrid 1.19x. Writes docs/gpu-check.json and
   docs/gpu-check.md (GPU, driver, torch/CUDA versions, the tests' outcome, the table), and the full
   pytest log as docs/gpu-check-tests.log (failures are also printed in full).

A few minutes on an H100/H200 (the benchmark is about 2 s per model, mode, batch and precision).

    python3 scripts/gpu_check.py                  # or: make gpu-check [PYTHON=python3]
    python3 scripts/gpu_check.py --seconds 1 --skip-tests
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("numpy", "onnx", "onnxruntime", "onnxscript", "PIL", "tqdm", "pytest")
PYTEST_MARKS = "gpu or tensorrt"


def say(text: str) -> None:
    print(text, flush=True)


def setup_problem() -> str | None:
    """Why this machine cannot run the GPU check (one line), or None."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed; run on a GPU machine with a CUDA build of PyTorch"
    import torch

    if not torch.cuda.is_available():
        build = torch.version.cuda or "none: a CPU-only build"
        return (f"no CUDA GPU visible to PyTorch {torch.__version__} (its CUDA: {build}); run `make gpu-check` "
                "on a machine with an NVIDIA GPU and a CUDA build of PyTorch")
    if missing:
        return f"missing Python packages {', '.join(missing)}; install them (the tests and benchmark import them)"
    return None


def run_tests(seconds_limit: int) -> dict:
    """`pytest -m "gpu or tensorrt"` on this working tree in a subprocess, its output streamed; returns
    the exit code and pytest's summary line."""
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rs", "--tb=short", "-m",
               PYTEST_MARKS, "tests"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    say(f"[gpu-check] tests: pytest -m \"{PYTEST_MARKS}\" (about a minute or two)")
    started = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "PASSED" in line or "FAILED" in line or "ERROR" in line or line.startswith(("SKIPPED", "=")):
                say("  " + line.rstrip())
            if time.perf_counter() - started > seconds_limit:
                proc.kill()
                lines.append(f"timed out after {seconds_limit} s")
                break
        code = proc.wait()
    summary = next((line.strip("= ") for line in reversed(lines) if line.startswith("=") and " in " in line),
                   lines[-1] if lines else "")
    if code not in (0, 5):
        for line in failure_details(lines):
            say("  " + line)
    return {"command": f"pytest -m \"{PYTEST_MARKS}\"", "exit_code": code, "summary": summary,
            "seconds": round(time.perf_counter() - started, 1), "log": "\n".join(lines) + "\n"}


def failure_details(lines: list[str]) -> list[str]:
    """pytest's FAILURES/ERRORS section (tracebacks and assertion values), which the filtered stream omits."""
    start = next((i for i, line in enumerate(lines) if line.startswith("=") and ("FAILURES" in line or
                                                                               "ERRORS" in line)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if "short test summary" in lines[i]), len(lines))
    return lines[start + 1:end]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="benchmark time per model, mode, batch (s)")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for gpu-check.json and .md")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmark")
    parser.add_argument("--skip-bench", action="store_true", help="only the tests (nothing written)")
    parser.add_argument("--test-timeout", type=int, default=360, help="limit for the test run (s)")
    args = parser.parse_args(argv)

    problem = setup_problem()
    if problem:
        print(f"gpu-check: error: {problem}", file=sys.stderr)
        return 2
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    import logging

    import bench_gpu

    logging.basicConfig(level=logging.WARNING, format="[gpu-check] %(message)s", stream=sys.stdout)
    logging.getLogger("pfdeploy.runtime.bench").setLevel(logging.INFO)  # "batch 256: 5 target(s), ..."

    started = time.perf_counter()
    env = bench_gpu.gpu_environment()
    say(f"[gpu-check] {env['gpu']} (cc {env['compute_capability']}), driver {env['driver']}, torch {env['torch']} "
        f"(CUDA {env['torch_cuda']}), cuda-bindings {env['cuda_bindings']}, working tree {REPO}")
    tests = None if args.skip_tests else run_tests(args.test_timeout)
    if args.skip_bench:
        if tests is not None:
            tests.pop("log")
        return 0 if tests is None or tests["exit_code"] in (0, 5) else 1
    command = " ".join(["scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    result = bench_gpu.run_benchmark(args.seconds, command=command, say=say)
    out = args.out
    if tests is not None:
        from pfdeploy._io import write_bytes_atomic

        write_bytes_atomic(out / "gpu-check-tests.log", tests.pop("log").encode())
        tests["log_file"] = "gpu-check-tests.log"
    result["tests"] = tests
    bench_gpu.write_result(result, out / "gpu-check.json", out / "gpu-check.md")
    say("")
    say(bench_gpu.markdown(result))
    elapsed = time.perf_counter() - started
    say(f"[gpu-check] wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'} in {elapsed:.0f} s")
    if tests is not None and tests["exit_code"] not in (0, 5):
        print(f"gpu-check: error: the GPU tests failed ({tests['summary']}); see the log above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
