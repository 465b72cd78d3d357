"""`make gpu-check`: check pfdeploy's GPU paths on a bare CUDA machine and measure them, within a hard time limit.

For a machine with an NVIDIA GPU and a preinstalled CUDA build of PyTorch (with Triton), and no network,
no project venv, no TensorRT and no onnxruntime-gpu: it runs the project from this working tree
(PYTHONPATH, no install) with the Python that runs it.

1. Refuses in one line (exit 2) without a CUDA GPU visible to PyTorch, or without what the tests import.
2. `pytest -m "gpu or tensorrt"`: the torch CUDA backend (folded, channels-last, CUDA graphs, compiled,
   fused), the Triton kernel against PyTorch, .pt2 packages on CUDA, the cuda-python memory layer; the
   TensorRT tests skip with their reason when TensorRT is absent. Its log goes to docs/gpu-check-tests.log.
3. The GPU benchmark (benchmarks/bench_gpu.py) in a child process: every path (eager_cg, folded, compiled,
   fused, pt2) of r50, r50_max, r50_hybrid, vit_s_max, pit_s_max, FP16 and FP32, batch 256 and 1, device-only
   and end to end, each path verified before it is timed, plus the torch.profiler split of r50 vs r50_max.
   It rewrites docs/gpu-check.json and docs/gpu-check.md after every session and timing, FP16 batch 256 of
   r50, r50_max and r50_hybrid (issue 18's criterion) first, with a guaranteed share of the time.

Time: `--budget` seconds for everything (default 480; `--quick`: 240, three ResNets, FP16 only, no tests
unless --tests). The tests get at most --test-timeout (and 40 %) of it (tests/fuzz, which needs hypothesis,
is not collected; a module that cannot be imported does not stop the others); the benchmark runs its phases
in the rest and skips compiles that would not fit; the child is killed 45 s after its budget, and what it
had written is kept and marked as stopped. One failing path or group does not lose the others' numbers.

    python3 scripts/gpu_check.py                  # or: make gpu-check [PYTHON=python3] [GPU_CHECK_ARGS=--quick]
    python3 scripts/gpu_check.py --quick
    python3 scripts/gpu_check.py --skip-tests --models r50,r50_max --paths eager_cg,compiled,fused
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("numpy", "onnx", "onnxruntime", "onnxscript", "PIL", "tqdm", "pytest")
PYTEST_MARKS = "gpu or tensorrt"
#: Test folders with no gpu or tensorrt test whose modules import an optional package at module level
#: (tests/fuzz: hypothesis): not collected, so that a machine without it still runs every GPU test.
PYTEST_IGNORE = ("tests/fuzz",)
#: Optional packages no collected test module may import at module level (tests/test_gpu_check.py checks).
OPTIONAL_IMPORTS = ("hypothesis", "sklearn", "matplotlib", "openvino", "tritonclient", "tensorrt", "polygraphy")
FULL_BUDGET, QUICK_BUDGET = 480.0, 240.0
GRACE = 45.0  # beyond the benchmark's own budget before its process is killed
WRITE_MARGIN = 15.0


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


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_tests(seconds_limit: float) -> dict:
    """`pytest -m "gpu or tensorrt"` on this working tree in a subprocess, its output streamed; returns
    the exit code and pytest's summary line."""
    command = pytest_command()
    say(f"[gpu-check] tests: pytest -m \"{PYTEST_MARKS}\" (at most {seconds_limit:.0f} s)")
    started = time.perf_counter()
    lines, code = stream(command, seconds_limit, lambda line: "PASSED" in line or "FAILED" in line or "ERROR" in line
                         or line.startswith(("SKIPPED", "=")))
    summary = next((line.strip("= ") for line in reversed(lines) if line.startswith("=") and " in " in line),
                   lines[-1] if lines else "")
    if code not in (0, 5):
        for line in failure_details(lines):
            say("  " + line)
    return {"command": f"pytest -m \"{PYTEST_MARKS}\"", "exit_code": code, "summary": summary,
            "seconds": round(time.perf_counter() - started, 1), "log": "\n".join(lines) + "\n"}


def pytest_command() -> list[str]:
    """The GPU tests' pytest command: the marked tests, the PYTEST_IGNORE folders left out, and a module that
    cannot be imported reported without stopping the others (--continue-on-collection-errors)."""
    ignore = [f"--ignore={folder}" for folder in PYTEST_IGNORE]
    return [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rs", "--tb=short",
            "--continue-on-collection-errors", *ignore, "-m", PYTEST_MARKS, "tests"]


def stream(command: list[str], seconds_limit: float, shown=lambda line: True) -> tuple[list[str], int]:
    """Run `command` in its own process group, print the lines `shown` selects, kill it (and its children)
    after `seconds_limit`; returns (all lines, exit code; -9 when killed)."""
    import signal
    import threading

    lines: list[str] = []
    with subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1, start_new_session=True) as proc:
        timer = threading.Timer(seconds_limit, lambda: _kill_group(proc, signal.SIGKILL))
        timer.start()
        try:
            for line in proc.stdout:
                lines.append(line.rstrip())
                if shown(line):
                    say("  " + line.rstrip())
        finally:
            timer.cancel()
        code = proc.wait()
    if code == -9:
        lines.append(f"killed after {seconds_limit:.0f} s (the time budget)")
    return lines, code


def _kill_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child and what it started (Inductor's compile workers)
    except (ProcessLookupError, PermissionError):
        pass


def failure_details(lines: list[str]) -> list[str]:
    """pytest's FAILURES/ERRORS section (tracebacks and assertion values), which the filtered stream omits."""
    start = next((i for i, line in enumerate(lines) if line.startswith("=") and ("FAILURES" in line or
                                                                               "ERRORS" in line)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if "short test summary" in lines[i]), len(lines))
    return lines[start + 1:end]


def time_split(budget: float, tests: bool, test_timeout: float) -> tuple[float, float]:
    """(seconds for the tests, seconds for the benchmark) of a total `budget`: the tests take at most
    `test_timeout` and at most 40 % of it; the benchmark the rest, less the margin for writing the files."""
    test_seconds = min(test_timeout, 0.4 * budget) if tests else 0.0
    return test_seconds, max(0.0, budget - test_seconds - WRITE_MARGIN)


def benchmark_command(args, run_id: str, out: Path, seconds: float, command: str) -> list[str]:
    """The bench_gpu.py child's command line (its own options passed through, the budget replaced)."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--json", str(out / "gpu-check.json"),
           "--markdown", str(out / "gpu-check.md"), "--budget", f"{seconds:.0f}", "--run-id", run_id,
           "--command", command]
    for flag in ("seconds", "models", "paths", "precisions", "batches", "compile_mode"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    return cmd + (["--quick"] if args.quick else [])


def finish(out: Path, run_id: str, tests: dict | None, code: int, elapsed: float) -> dict | None:
    """Add the tests and the child's fate to the result files it wrote; None when it wrote none for this run."""
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    import bench_gpu

    path = out / "gpu-check.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if result.get("run_id") != run_id:
        return None  # an earlier run's file: this one measured nothing
    if code != 0 and result.get("status") != "complete":
        result["status"] = (f"stopped after {elapsed:.0f} s (benchmark exit {code}); the groups timed before "
                            "are kept")
    result["tests"] = tests
    bench_gpu.write_result(result, path, out / "gpu-check.md")
    return result


def main(argv=None) -> int:
    sys.path[:0] = [str(REPO / "benchmarks")]
    import bench_gpu

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_gpu.add_arguments(parser)  # --budget is the whole check's here
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder for gpu-check.json and .md")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmark")
    parser.add_argument("--tests", action="store_true", help="with --quick: run the tests too")
    parser.add_argument("--skip-bench", action="store_true", help="only the tests (nothing written but the log)")
    parser.add_argument("--test-timeout", type=float, default=240, help="limit for the test run (s)")
    args = parser.parse_args(argv)

    problem = setup_problem()
    if problem:
        print(f"gpu-check: error: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    budget = args.budget or (QUICK_BUDGET if args.quick else FULL_BUDGET)
    with_tests = not args.skip_tests and (args.tests or not args.quick)
    test_seconds, bench_seconds = time_split(budget, with_tests, args.test_timeout)
    env = bench_gpu.gpu_environment()
    say(f"[gpu-check] {env['gpu']} (cc {env['compute_capability']}), driver {env['driver']}, torch {env['torch']} "
        f"(CUDA {env['torch_cuda']}), Triton {env['triton']}, working tree {REPO}; budget {budget:.0f} s")
    tests = run_tests(test_seconds) if with_tests else None
    if tests is not None:
        sys.path[:0] = [str(REPO)]
        from pfdeploy._io import write_bytes_atomic

        write_bytes_atomic(args.out / "gpu-check-tests.log", tests.pop("log").encode())
        tests["log_file"] = "gpu-check-tests.log"
    tests_failed = tests is not None and tests["exit_code"] not in (0, 5)
    if args.skip_bench:
        return 1 if tests_failed else 0
    bench_seconds = max(30.0, budget - (time.monotonic() - started) - WRITE_MARGIN)
    run_id = uuid.uuid4().hex
    command = " ".join(["scripts/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    say(f"[gpu-check] benchmark: {bench_seconds:.0f} s budget (killed at +{GRACE:.0f} s)")
    _, code = stream(benchmark_command(args, run_id, args.out, bench_seconds, command), bench_seconds + GRACE)
    result = finish(args.out, run_id, tests, code, time.monotonic() - started)
    elapsed = time.monotonic() - started
    if result is None:
        print(f"gpu-check: error: the benchmark wrote no result (exit {code}); see its output above", file=sys.stderr)
        return 1
    say(f"[gpu-check] {result['status']}; wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.md'} "
        f"in {elapsed:.0f} s")
    if tests_failed:
        print(f"gpu-check: error: the GPU tests failed ({tests['summary']}); see the log above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
