"""Benchmark report: documented JSON fields, sane values, skipped batches, table, plot, CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pfdeploy.cli import main
from pfdeploy.errors import PfdeployError
from pfdeploy.runtime import load
from pfdeploy.runtime.bench import SCHEMA, benchmark, format_table, plot_throughput, rounds_for
from pfdeploy.runtime.session import Session, spec_for_format


@pytest.fixture(scope="module")
def report(cheap_onnx, cheap_checkpoint):
    dynamic, static = cheap_onnx("r50_hybrid"), cheap_onnx("r50", batch=2)
    torch_session = load(dynamic, backend="torch", checkpoint=cheap_checkpoint("r50_hybrid"))
    try:
        return benchmark([str(dynamic), str(static), ("torch", torch_session)], batches=(1, 2), seconds=0.05,
                         warmup=2)
    finally:
        torch_session.close()


def test_report_has_the_documented_fields(report):
    assert report["schema"] == SCHEMA
    assert set(report) == {"schema", "created", "environment", "settings", "targets", "results"}
    assert {"pfdeploy", "python", "numpy", "torch", "onnxruntime", "cpu", "cpu_count", "gpu"} <= set(
        report["environment"])
    assert report["settings"] == {"batches": [1, 2], "seconds": 0.05, "warmup": 2, "interleaved": True}
    assert [t["backend"] for t in report["targets"]] == ["onnxruntime", "onnxruntime", "torch"]
    for target in report["targets"]:
        assert {"label", "target", "backend", "device", "precision", "model", "input"} <= set(target)


def test_results_are_sane(report):
    measured = [r for r in report["results"] if "skipped" not in r]
    assert {(r["label"].split("/")[-1][:3], r["batch"]) for r in measured} >= {("r50", 1), ("r50", 2),
                                                                                 ("tor", 1), ("tor", 2)}
    assert all(r["mode"] == "end_to_end" for r in measured)  # CPU: no separate device-only figure
    for r in measured:
        lat = r["latency_ms"]
        assert r["calls"] >= 5
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]


class _SleepSession(Session):
    """A session whose every call takes at least SLEEP seconds: a workload of known cost."""

    SLEEP = 0.005

    def __init__(self):
        super().__init__(spec_for_format("float-nchw", 8), {})

    def _run(self, array):
        time.sleep(self.SLEEP)
        return np.zeros((len(array), 2), np.float32)


def test_figures_reflect_the_time_a_call_takes():
    """Latencies in ms, never below the call's real cost; img/s counts the batch's images."""
    result = benchmark([("sleep", _SleepSession())], batches=(4,), seconds=0.1, warmup=1)["results"][0]
    lat, floor_ms = result["latency_ms"], 1e3 * _SleepSession.SLEEP
    assert floor_ms <= lat["p50"] <= lat["p99"] < 20 * floor_ms
    assert 4 / (20 * _SleepSession.SLEEP) < result["images_per_second"] <= 4 / _SleepSession.SLEEP


def test_out_of_range_batch_is_skipped_with_a_reason(report):
    skipped = [r for r in report["results"] if "skipped" in r]
    assert len(skipped) == 1 and skipped[0]["batch"] == 1 and "2..2" in skipped[0]["skipped"]


def test_table_and_plot(report, tmp_path):
    table = format_table(report)
    assert table.splitlines()[0].split()[:3] == ["target", "backend", "device"]
    assert "torch" in table and "skipped" in table
    png = plot_throughput(report, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rounds_for_targets_the_requested_time():
    assert rounds_for([0.01, 0.03], 1.0) == 50
    assert rounds_for([10.0], 1.0) == 5  # never fewer than 5 samples
    assert rounds_for([1e-12], 1e9) == 100_000


@pytest.mark.parametrize("kwargs,message", [
    ({"targets": []}, "at least one target"),
    ({"batches": [0]}, "positive"),
    ({"seconds": 0}, "positive"),
])
def test_bad_arguments(kwargs, message):
    args = {"targets": ["r50"], "batches": [1], "seconds": 1.0, **kwargs}
    with pytest.raises(PfdeployError, match=message):
        benchmark(args.pop("targets"), **args)


def test_cli_bench_writes_json_and_plot(cheap_onnx, tmp_path, capsys):
    path = cheap_onnx("r50_hybrid")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", str(path), "--batch", "1,2", "--seconds", "0.05", "--warmup", "1", "--json", str(out),
                 "--plot", str(png)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["schema"] == SCHEMA and len(data["results"]) == 2
    assert png.stat().st_size > 0 and "img/s" in capsys.readouterr().out
    assert main(["bench", str(path), "--batch", "1,x"]) == 1


def test_block_of_counts_every_call_but_the_first():
    from pfdeploy.runtime.bench import block_of

    calls, sink = [], []
    block_of(lambda: calls.append(1), 4, sink)()
    assert len(calls) == 4 and len(sink) == 3 and all(t >= 0 for t in sink)


def test_a_first_plot_prints_nothing_of_matplotlib(tmp_path):
    """On a first run matplotlib builds its font cache and logs "generated new fontManager"; under the
    CLI's logging (INFO, stderr) none of that reaches the user."""
    import os
    import subprocess
    import sys

    script = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='pfdeploy: %(message)s')\n"
              "from pfdeploy.runtime.bench import plot_throughput\n"
              "report = {'results': [{'label': 'a', 'mode': 'end_to_end', 'batch': 1, 'images_per_second': 9.0}],"
              " 'environment': {'cpu': 'x'}}\n"
              "plot_throughput(report, sys.argv[1])\n")
    config = tmp_path / "mpl"  # empty: matplotlib's first run on this machine, as far as it knows
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p.png")], capture_output=True, text=True,
                         env={**os.environ, "MPLCONFIGDIR": str(config)}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert any(config.glob("fontlist*.json"))  # the font cache was built in this run
    assert (run.stdout, run.stderr) == ("", "")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


# --- batch bounds before any work (issue 19, item 7) ------------------------------------------------------


def test_a_batch_over_what_any_artifact_declares_is_refused_before_anything_opens(tmp_path, capsys):
    """A dynamic batch is declared as 1..MAX_BATCH (4096): 5000 is refused before a target is even opened
    (the target here does not exist, so opening it first would give another error)."""
    missing = str(tmp_path / "never-opened.onnx")
    with pytest.raises(PfdeployError, match="5000 is over .*4096"):
        benchmark([missing], batches=(1, 5000), seconds=0.05)
    assert main(["bench", missing, "--batch", "1,5000"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch 5000 is over" in err[0]


def test_per_image_memory_of_an_onnx_graph_counts_its_activations(tmp_path):
    """conv_classifier: input 3x8x8, Conv -> 4x8x8, Relu 4x8x8 in and out (the largest node: 2 x 1024 bytes)."""
    from tiny_graphs import conv_classifier

    from pfdeploy.runtime.bench import onnx_bytes_per_image

    assert onnx_bytes_per_image(conv_classifier(tmp_path / "m.onnx")) == 2 * 4 * 8 * 8 * 4


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_timing(tmp_path, monkeypatch):
    from tiny_graphs import conv_classifier

    from pfdeploy.runtime import bench

    path = conv_classifier(tmp_path / "m.onnx")
    timed = []
    monkeypatch.setattr(bench, "benchmark_batch", lambda *a, **k: timed.append(a) or [])
    monkeypatch.setattr(bench, "available_memory", lambda: 4096 * 2048 - 1)  # one byte short for batch 4096
    with pytest.raises(PfdeployError, match=r"batch 4096 needs at least 8\.4 MB .*available"):
        benchmark([str(path)], batches=(1, 4096), seconds=0.05)
    assert timed == []  # refused before batch 1 was timed
    monkeypatch.setattr(bench, "available_memory", lambda: 4096 * 2048)
    benchmark([str(path)], batches=(1, 4096), seconds=0.05)
    assert [a[1] for a in timed] == [1, 4096]


def test_model_activations_are_estimated_without_weights():
    from pfdeploy.runtime.bench import model_bytes_per_image

    tiny = model_bytes_per_image("r50_hybrid", {"layers": [1, 1, 1, 1], "base_width": 8, "img_size": 32})
    full = model_bytes_per_image("r50_hybrid")
    assert 0 < tiny < full and full >= 2 * 256 * 56 * 56 * 4  # a 256x56x56 stage-1 block, in and out
