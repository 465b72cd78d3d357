"""Sensitivity analysis (pfdeploy.calibration.sensitivity, `pfdeploy quantize --analyze`): on an outlier
fixture quantized without equalization it names the tensors the outliers crush, marks the PF layers,
measures what keeping the worst in float buys, and writes its JSON and plot beside the graph."""

from __future__ import annotations

import json

import onnx
import pytest
from outlier_fixtures import CASES

from pfdeploy.calibration import int8_from_onnx
from pfdeploy.calibration.equalize import equalization_sites
from pfdeploy.calibration.fixtures import get_fixture
from pfdeploy.calibration.quantize import sensitivity_paths
from pfdeploy.calibration.sensitivity import SCHEMA
from pfdeploy.cli import main

CASE = "r50-reduce-x64"  # every bottleneck's reduction output has outlier channels


def _outlier_tensors(fp32) -> set[str]:
    """The tensors between each reduction conv and its reader: where outlier_fixtures put the outliers."""
    model = onnx.load(str(fp32))
    weights = {n.name: n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    return {t for s in equalization_sites(model) if "reduction_block" in weights[s.producer] for t in s.tensors}


def test_analyze_ranks_the_crushed_tensors_first_and_writes_json_and_plot(outlier_export, tmp_path, capsys):
    fp32, _ = outlier_export(CASE)
    fx = get_fixture(CASES[CASE].fixture)
    out = tmp_path / "m.int8.onnx"
    code = main(["quantize", str(fp32), "--calib-data", str(fx.calib_dir), "--num-images", "128", "--output",
                 str(out), "--cache-dir", str(tmp_path), "--no-equalize", "--bias-correction", "off", "--analyze"])
    printed = capsys.readouterr().out
    assert code == 0
    json_path, png_path = sensitivity_paths(out)
    report = json.loads(json_path.read_text())
    assert report["schema"] == "pfdeploy.sensitivity/1" and report["source"] == str(fx.calib_dir)
    assert report["int8_file"] == out.name and len(report["int8_sha256"]) == 64
    rows = report["tensors"]
    quantized = [n for n in onnx.load(out).graph.node if n.op_type == "QuantizeLinear"
                 and n.input[0] not in {i.name for i in onnx.load(out).graph.initializer}]
    assert len(rows) == len(quantized)  # every quantized activation, once
    outliers = _outlier_tensors(fp32)
    worst = [r["tensor"] for r in rows[:8]]
    assert set(worst) <= outliers, (worst, outliers)
    assert rows[0]["pf"] and rows[0]["channel_sqnr_db"] < 10  # an avg-pool / max-pool tensor, crushed
    assert all(r["pf"] == ({r["producer_op"], *r["consumer_ops"]} & {"MaxPool", "AveragePool"} != set())
               for r in rows)
    measured = [r for r in rows if r["float_effect"]]
    assert len(measured) == 5 and all(r["nodes_to_float"] for r in measured)
    assert max(r["float_effect"]["agreement"] for r in measured) > report["int8"]["agreement"] + 5
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rank  tensor" in printed and rows[0]["tensor"] in printed
    assert f"sensitivity analysis: {json_path}" in printed


def test_if_failing_skips_a_passing_graph_and_drops_the_stale_analysis(outlier_export, tmp_path):
    fp32, _ = outlier_export(CASE)
    fx = get_fixture(CASES[CASE].fixture)
    out = tmp_path / "m.int8.onnx"
    json_path, png_path = sensitivity_paths(out)
    json_path.write_text(json.dumps({"schema": SCHEMA, "int8_file": out.name}))  # of the graph replaced here
    png_path.write_bytes(b"old")
    int8_from_onnx(fp32, fx.calib_dir, out, num_images=64, cache_dir=tmp_path, analyze="if-failing")
    assert out.is_file() and not json_path.exists() and not png_path.exists()
    # a file of that name that pfdeploy did not write for this graph is the user's: kept
    for foreign in ("{}", json.dumps({"schema": SCHEMA, "int8_file": "other.int8.onnx"})):
        json_path.write_text(foreign)
        png_path.write_bytes(b"mine")
        int8_from_onnx(fp32, fx.calib_dir, out, num_images=64, cache_dir=tmp_path, analyze="if-failing")
        assert json_path.read_text() == foreign and png_path.read_bytes() == b"mine"


@pytest.mark.parametrize("bad, match", [(dict(max_drop=0.5), "needs --val-data"),
                                        (dict(max_drop=-1.0, val_data="x"), ">= 0"),
                                        (dict(max_drop=float("nan"), val_data="x"), ">= 0"),
                                        (dict(analyze="sometimes"), "analyze mode")])
def test_budget_and_analysis_arguments_are_checked_before_any_work(bad, match, tmp_path):
    from pfdeploy.errors import PfdeployError

    with pytest.raises(PfdeployError, match=match):
        int8_from_onnx(tmp_path / "missing.onnx", tmp_path, tmp_path / "o.onnx", **bad)


def test_a_fifo_where_the_analysis_goes_is_left_alone_not_opened(outlier_export, tmp_path):
    """Removing an old analysis read the JSON with a plain read: a FIFO of that name would block forever."""
    import os

    fp32, _ = outlier_export(CASE)
    out = tmp_path / "m.int8.onnx"
    json_path, _ = sensitivity_paths(out)
    os.mkfifo(json_path)
    int8_from_onnx(fp32, get_fixture(CASES[CASE].fixture).calib_dir, out, num_images=64, cache_dir=tmp_path)
    assert out.is_file() and json_path.is_fifo()
