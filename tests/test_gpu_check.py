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


def _report(rates: dict[tuple[str, int, str], float]) -> dict:
    results = [{"label": m, "batch": b, "mode": mode, "images_per_second": v, "latency_ms": {"p50": 1000 * b / v}}
               for (m, b, mode), v in rates.items()]
    return {"results": results + [{"label": "pit_s_max", "batch": 256, "mode": "device", "skipped": "oom"}]}


def test_rows_are_relative_to_r50_in_the_same_precision_batch_and_mode():
    reports = {
        "fp32": _report({("r50", 1, "device"): 100.0, ("r50_max", 1, "device"): 150.0,
                         ("r50", 256, "device"): 1000.0, ("r50_hybrid", 256, "device"): 1100.0}),
        "fp16": _report({("r50", 1, "device"): 400.0, ("r50_max", 1, "device"): 200.0}),
    }
    rows = {(r["model"], r["precision"], r["batch"]): r for r in bench_gpu.rows_from_reports(reports)}
    assert len(rows) == 6  # the skipped result is left out
    assert rows[("r50_max", "fp32", 1)]["speed_vs_r50"] == pytest.approx(1.5)
    assert rows[("r50_hybrid", "fp32", 256)]["speed_vs_r50"] == pytest.approx(1.1)
    assert rows[("r50_max", "fp16", 1)]["speed_vs_r50"] == pytest.approx(0.5)
    assert rows[("r50_max", "fp32", 1)]["paper_speed_vs_r50"] == pytest.approx(8.7 / 6.8)
    assert rows[("r50", "fp16", 1)]["paper_speed_vs_r50"] is None


def test_markdown_names_the_gpu_and_every_row():
    rows = bench_gpu.rows_from_reports({"fp16": _report({("r50", 1, "device"): 400.0,
                                                         ("r50_max", 1, "device"): 500.0})})
    env = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "gpu_memory_gib": 139.8, "driver": "580.1",
           "torch": "2.11.0", "torch_cuda": "13.0", "cudnn": 91000, "cuda_bindings": "13.0.1", "python": "3.12.3"}
    text = bench_gpu.markdown({"created": "2026-11-30", "command": "scripts/gpu_check.py", "environment": env,
                               "settings": {"tf32": False}, "rows": rows,
                               "tests": {"command": "pytest", "exit_code": 0, "summary": "10 passed"}})
    assert "**NVIDIA H200**" in text and "10 passed" in text and "tf32=False" in text
    assert "| r50_max | fp16 | 1 | device | 500.0 | 2.00 | 1.25x | 1.28x |" in text


def test_failure_details_are_pytest_s_failures_section():
    sys.path.insert(0, str(REPO / "scripts"))
    from gpu_check import failure_details

    lines = ["t.py::a PASSED", "=== FAILURES ===", "___ test_b ___", "E   assert 1 == 2",
             "=== short test summary info ===", "FAILED t.py::b"]
    assert failure_details(lines) == ["___ test_b ___", "E   assert 1 == 2"]
    assert failure_details(["t.py::a PASSED", "=== 1 passed in 1s ==="]) == []
