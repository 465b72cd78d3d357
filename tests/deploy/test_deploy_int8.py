"""`deploy` and INT8 with outlier channels: the default (equalized) INT8 graph and `--int8-max-drop` keep the
outlier fixtures within budget with verify PASS, and a failing INT8 graph brings its sensitivity analysis
into report.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from outlier_fixtures import CASES, outlier_checkpoint

from pfdeploy.calibration.quantize import sensitivity_paths
from pfdeploy.cli import main
from pfdeploy.deploy import deploy, options_for_fixture
from pfdeploy.export import read_metadata

FIXTURE = "r50_hybrid_digits"
DIGITS = Path(__file__).resolve().parents[1] / "fixtures" / "digits"
FAST = {"bench_batches": (1,), "bench_seconds": 0.05, "verify_samples": 4}


def test_failing_int8_brings_its_sensitivity_analysis_into_the_report(tmp_path):
    from PIL import Image

    constant, out = tmp_path / "constant", tmp_path / "out"
    constant.mkdir()
    for i in range(8):
        Image.new("L", (32, 32), 0).save(constant / f"{i}.png")
    opts = options_for_fixture(FIXTURE, out, precisions=("int8",), calib_data=constant, calib_images=8,
                               openvino="no", **{**FAST, "verify_samples": 2})
    report = deploy(opts)
    int8 = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert not int8["verify"]["passed"]
    json_path, png_path = sensitivity_paths(out / int8["file"])
    analysis = json.loads(json_path.read_text())
    assert analysis["int8_sha256"] == int8["sha256"] and analysis["labelled"]
    markdown = (out / "report.md").read_text()
    section = markdown.split(f"## INT8 sensitivity: {int8['file']}")[1].split("## Artifacts")[0]
    assert "| rank | tensor | between | PF |" in section and analysis["tensors"][0]["tensor"] in section
    assert "--int8-max-drop" in section and json_path.name in section
    assert (f"![sensitivity]({png_path.name})" in section) == png_path.exists()
    again = deploy(opts)  # every step reused: the analysis is one of the INT8 step's outputs
    assert again["reused"] and f"## INT8 sensitivity: {int8['file']}" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["r50_hybrid", "--calib-data", str(DIGITS / "calib"), "--int8-max-drop", "1"], "needs --val-data"),
    (["--fixture", FIXTURE, "--int8-max-drop", "-0.5"], ">= 0"),
    (["--fixture", FIXTURE, "--int8-max-drop", "nan"], ">= 0"),
])
def test_int8_max_drop_is_checked_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["deploy", *args, "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["r50-reduce-x64", "vit-norms-x64"])
@pytest.mark.parametrize("max_drop", [None, 0.5])
def test_outlier_fixture_deploys_within_budget_with_verify_pass(case, max_drop, tmp_path):
    """Issue 17's "done when": defaults within 1.0 point of FP32, --int8-max-drop 0.5 within 0.5, verify PASS
    on ONNX Runtime and OpenVINO, TensorRT check PASS."""
    spec = CASES[case]
    checkpoint = outlier_checkpoint(spec, tmp_path / "outliers.pth")
    out = tmp_path / "out"
    opts = options_for_fixture(spec.fixture, out, checkpoint=checkpoint, precisions=("fp32", "int8"),
                               int8_max_drop=max_drop, **FAST)
    report = deploy(opts)
    reference = report["accuracy_reference"]["top1"]
    rows = [a for a in report["artifacts"] if a["precision"] == "int8"]
    assert {a["backend"] for a in rows} >= {"onnxruntime"}
    for row in rows:
        assert row["verify"]["passed"], row["label"]
        assert row["accuracy"]["top1"] >= reference - (1.0 if max_drop is None else max_drop), row["label"]
        assert row["tensorrt_check"]["passed"]
    meta = read_metadata(out / rows[0]["file"])
    assert json.loads(meta["pfdeploy.calibration_equalization"])["sites"] > 0
    assert ("pfdeploy.int8_budget" in meta) == (max_drop is not None)
    markdown = (out / "report.md").read_text()
    assert ("INT8 budget" in markdown) == (max_drop is not None)
    if max_drop is not None:
        assert f"INT8 budget {max_drop:g} points of top-1 on 400 images" in markdown
