"""`make gpu-check` (scripts/gpu_check.py, benchmarks/bench_gpu.py): the parts that run without a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_gpu  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_check_refuses_in_one_line_without_a_gpu(capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_check import main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU visible to PyTorch" in err


def _report(rates: dict[tuple[str, str, int, str], float]) -> dict:
    results = [{"label": f"{m}|{p}", "batch": b, "mode": mode, "images_per_second": v,
                "latency_ms": {"p50": 1000 * b / v}} for (m, p, b, mode), v in rates.items()]
    return {"results": results + [{"label": "pit_s_max|pt2", "batch": 256, "mode": "device", "skipped": "oom"}]}


FP16 = {("r50", "eager_cg", 256, "device"): 1000.0, ("r50", "compiled", 256, "device"): 1500.0,
        ("r50_max", "eager_cg", 256, "device"): 900.0, ("r50_max", "fused", 256, "device"): 2100.0,
        ("r50_hybrid", "compiled", 256, "device"): 1700.0}


def test_rows_are_relative_to_r50_on_the_same_path_and_to_its_eager_cg():
    rows = {(r["model"], r["path"]): r for r in bench_gpu.rows_from_report(_report(FP16), "fp16")}
    assert len(rows) == 5  # the skipped result is left out
    assert rows[("r50_max", "eager_cg")]["speed_vs_r50_same_path"] == pytest.approx(0.9)
    assert rows[("r50_max", "fused")]["speed_vs_r50_same_path"] is None  # r50 has no fused path
    assert rows[("r50_max", "fused")]["speed_vs_r50_eager_cg"] == pytest.approx(2.1)
    assert rows[("r50_max", "fused")]["paper_speed_vs_r50"] == pytest.approx(8.7 / 6.8)
    assert rows[("r50", "compiled")]["precision"] == "fp16" and rows[("r50", "compiled")]["batch"] == 256


def test_fastest_paths_and_the_done_when_checks():
    rows = bench_gpu.rows_from_report(_report(FP16), "fp16")
    fastest = {f["model"]: f for f in bench_gpu.fastest_paths(rows)}
    assert (fastest["r50"]["path"], fastest["r50_max"]["path"]) == ("compiled", "fused")
    assert fastest["r50_max"]["speed_vs_r50_fastest"] == pytest.approx(1.4)
    assert fastest["r50"]["speed_vs_r50_eager_cg"] == pytest.approx(1.5)
    paths = [{"model": "r50_max", "path": "fused", "precision": "fp16", "batch": 256, "status": "ok"},
             {"model": "r50", "path": "pt2", "precision": "fp16", "batch": 256, "status": "failed"}]
    checks = {c["criterion"]: c for c in bench_gpu.criteria(list(fastest.values()), paths)}
    assert checks["FP16 b256 device: r50_max fastest / r50 fastest"]["status"] == "met"
    assert checks["FP16 b256 device: r50_hybrid fastest / r50 fastest"]["value"] == pytest.approx(1.133, abs=1e-3)
    assert checks["FP16 b256 device: r50_hybrid fastest / r50 fastest"]["status"] == "not met"
    assert checks["FP16 b256 device: r50 fastest / r50 eager_cg"]["status"] == "met"
    assert checks["FP32 b256 device: r50_max fastest / r50 fastest"]["status"] == "not measured"
    assert checks["every compiled/fused FP16 path passes verify's fp16 row"]["status"] == "not met: r50 pt2 b256"


def test_markdown_names_the_gpu_the_fastest_paths_and_every_row():
    rows = bench_gpu.rows_from_report(_report(FP16), "fp16")
    env = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "gpu_memory_gib": 139.8, "driver": "580.1",
           "torch": "2.11.0", "torch_cuda": "13.0", "cudnn": 91000, "cuda_bindings": "13.0.1", "triton": "3.5.0",
           "python": "3.12.3"}
    fastest = bench_gpu.fastest_paths(rows)
    result = {"created": "2026-11-30", "command": "scripts/gpu_check.py", "environment": env, "status": "complete",
              "settings": bench_gpu.Settings().to_dict(), "rows": rows, "fastest": fastest, "paths": [],
              "criteria": bench_gpu.criteria(fastest, []), "profile": {},
              "tests": {"command": "pytest", "exit_code": 0, "summary": "10 passed"}}
    text = bench_gpu.markdown(result)
    assert "**NVIDIA H200**" in text and "10 passed" in text and "Triton 3.5.0" in text
    assert "| fp16 | 256 | device | r50_max | fused | 2100.0 | 1.40x | 2.10x | 1.28x |" in text
    assert "| r50_max | eager_cg | fp16 | 256 | device | 900.0 | 284.44 | 0.90x | 0.90x | 1.28x |" in text


def test_failure_details_are_pytest_s_failures_section():
    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_check import failure_details

    lines = ["t.py::a PASSED", "=== FAILURES ===", "___ test_b ___", "E   assert 1 == 2",
             "=== short test summary info ===", "FAILED t.py::b"]
    assert failure_details(lines) == ["___ test_b ___", "E   assert 1 == 2"]
    assert failure_details(["t.py::a PASSED", "=== 1 passed in 1s ==="]) == []


def _gpu_check():
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_check

    return gpu_check


def test_the_budget_goes_to_the_tests_first_and_the_benchmark_gets_the_rest():
    gpu_check = _gpu_check()
    assert gpu_check.time_split(420, True, 240) == (pytest.approx(168), pytest.approx(237))
    assert gpu_check.time_split(420, True, 100) == (100, pytest.approx(305))
    assert gpu_check.time_split(210, False, 240) == (0.0, pytest.approx(195))


def test_the_benchmark_child_gets_the_options_and_its_share(tmp_path):
    import argparse

    gpu_check = _gpu_check()
    parser = argparse.ArgumentParser()
    bench_gpu.add_arguments(parser)
    args = parser.parse_args(["--quick", "--models", "r50,r50_max", "--budget", "999"])
    cmd = gpu_check.benchmark_command(args, "abc", tmp_path, 120.4, "scripts/gpu_check.py --quick")
    assert cmd[cmd.index("--budget") + 1] == "120" and cmd[cmd.index("--run-id") + 1] == "abc"
    assert cmd[cmd.index("--models") + 1] == "r50,r50_max" and cmd[-1] == "--quick"
    assert "--seconds" not in cmd  # not given: the child's own default


def test_a_stopped_benchmark_keeps_its_groups_and_is_marked(tmp_path):
    gpu_check = _gpu_check()
    settings = bench_gpu.Settings()
    env = {"gpu": "G", "compute_capability": "9.0", "gpu_memory_gib": 1, "driver": "d", "torch": "t",
           "torch_cuda": "c", "cudnn": 1, "python": "p"}
    result = {**bench_gpu.new_result(settings, "x", environment=env), "run_id": "mine", "status": "running: 1"}
    bench_gpu.write_result(result, tmp_path / "gpu-check.json", tmp_path / "gpu-check.md")
    tests = {"command": "pytest", "exit_code": 0, "summary": "3 passed"}
    assert gpu_check.finish(tmp_path, "another run", tests, -9, 100.0) is None  # an earlier run's file
    done = gpu_check.finish(tmp_path, "mine", tests, -9, 100.0)
    assert done["status"].startswith("stopped after 100 s") and done["tests"] == tests
    assert "stopped after 100 s" in (tmp_path / "gpu-check.md").read_text()


def test_a_child_past_its_time_is_killed_with_what_it_printed():
    import time

    gpu_check = _gpu_check()
    started = time.monotonic()
    lines, code = gpu_check.stream([sys.executable, "-c", "import time; print('compiling', flush=True); "
                                    "time.sleep(60)"], 1.0, shown=lambda line: False)
    assert time.monotonic() - started < 30
    assert code == -9 and lines[0] == "compiling" and lines[-1].startswith("killed after 1 s")


def test_the_gpu_tests_collect_without_the_optional_packages():
    """No collected test module imports an optional package at module level (a GPU machine may lack them:
    one collection error used to stop every GPU test); the folders that do are left out of the run."""
    import ast

    gpu_check = _gpu_check()
    command = gpu_check.pytest_command()
    assert "--ignore=tests/fuzz" in command and "--continue-on-collection-errors" in command
    assert command[command.index("-m", 3) + 1] == "gpu or tensorrt"
    ignored = [REPO / folder for folder in gpu_check.PYTEST_IGNORE]
    offenders = []
    for module in sorted((REPO / "tests").rglob("*.py")):
        if any(folder in module.parents for folder in ignored):
            continue
        for node in ast.parse(module.read_text()).body:  # module level only; importorskip calls are fine
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{module.relative_to(REPO)}: {n}" for n in names
                          if n.split(".")[0] in gpu_check.OPTIONAL_IMPORTS]
    assert offenders == []
    for folder in ignored:  # and the ignored folders hold no GPU test
        assert not [m for m in folder.rglob("*.py") if "mark.gpu" in m.read_text() or "mark.tensorrt" in m.read_text()]
