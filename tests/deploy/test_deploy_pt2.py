"""deploy's AOTInductor packages: when they are made (`--pt2 auto|yes|no`), and (slow) a CPU deploy with them."""

from __future__ import annotations

import json

import pytest

from pfdeploy.deploy import DeployOptions, check_options, deploy, options_for_fixture
from pfdeploy.deploy.steps import pt2_plan
from pfdeploy.errors import PfdeployError


def test_auto_makes_packages_on_gpu_machines_only():
    on_cpu = pt2_plan("auto", ("fp32", "fp16", "int8"), cuda=False)
    assert on_cpu["precisions"] == [] and "no CUDA GPU" in on_cpu["note"] and "--pt2 yes" in on_cpu["note"]
    on_gpu = pt2_plan("auto", ("fp32", "fp16", "int8"), cuda=True)
    assert (on_gpu["device"], on_gpu["precisions"], on_gpu["skipped"]) == ("cuda", ["fp32", "fp16"], [])


def test_yes_compiles_fp32_for_the_cpu_and_says_why_not_fp16():
    plan = pt2_plan("yes", ("fp32", "fp16"), cuda=False)
    assert (plan["device"], plan["precisions"]) == ("cpu", ["fp32"])
    assert plan["skipped"] == [{"precision": "fp16", "reason": "fp16 .pt2 packages are compiled for CUDA"}]
    assert pt2_plan("yes", ("int8",), cuda=True)["precisions"] == []
    assert pt2_plan("no", ("fp32", "fp16"), cuda=True) == {"device": None, "precisions": [], "skipped": [],
                                                             "note": "not requested (--pt2 no)"}


def test_without_a_toolchain_auto_skips_with_the_reason_and_yes_refuses():
    """A CUDA .pt2 needs the CUDA toolkit: without it the build failed only after export and compilation."""
    from pfdeploy.errors import MissingDependencyError

    why = "a CUDA .pt2 package needs the CUDA toolkit (nvcc)"
    plan = pt2_plan("auto", ("fp32", "fp16"), cuda=True, toolchain=why)
    assert plan["precisions"] == [] and why in plan["note"]
    assert plan["skipped"] == [{"precision": "fp32", "reason": why}, {"precision": "fp16", "reason": why}]
    with pytest.raises(MissingDependencyError, match="--pt2 yes: a CUDA .pt2 package needs the CUDA toolkit"):
        pt2_plan("yes", ("fp32",), cuda=True, toolchain=why)


def test_an_unknown_mode_is_refused_before_any_work(tmp_path):
    with pytest.raises(PfdeployError, match="--pt2 'maybe': use one of auto, yes, no"):
        check_options(DeployOptions("r50", tmp_path / "out", pt2="maybe"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cpu_deploy_with_pt2_verifies_and_benchmarks_the_package(tmp_path):
    out = tmp_path / "out"
    opts = options_for_fixture("r50_hybrid_digits", out, precisions=("fp32", "fp16"), pt2="yes", openvino="no",
                               bench_batches=(1, 4), bench_seconds=0.1)
    report = deploy(opts)
    packages = [a for a in report["artifacts"] if a["format"] == "pt2"]
    assert [(a["file"], a["backend"], a["precision"]) for a in packages] == [
        ("r50_hybrid_digits.fp32.pt2", "pt2", "fp32")]
    package = packages[0]
    assert package["verify"]["passed"] and package["verify"]["max_rel"] < 1e-4
    assert package["accuracy"]["top1"] == report["accuracy_reference"]["top1"]
    assert {b["batch"] for b in package["bench"] if "img_per_s" in b} == {1, 4}
    assert report["pt2"]["packages"] == ["r50_hybrid_digits.fp32.pt2"] and report["pt2"]["skipped"][0]["precision"] \
        == "fp16"
    assert json.loads((out / "report.json").read_text())["pt2"]["device"] == "cpu"
    again = deploy(opts)  # unchanged inputs: the package is reused, not compiled again
    assert [s["reused"] for s in again["steps"] if s["step"] == "export pt2 fp32"] == [True]
