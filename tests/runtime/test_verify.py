"""verify_artifact / compare_logits / `pfdeploy verify`: PASS on faithful graphs, FAIL on wrong ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pfdeploy.cli import main
from pfdeploy.errors import PfdeployError
from pfdeploy.runtime.verify import TOLERANCES, compare_logits, smooth_images, verify_artifact


def test_compare_logits_identical_and_perturbed():
    ref = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    same = compare_logits(ref, ref.copy(), "fp32")
    assert same["passed"] and same["max_abs"] == 0 and same["top1"] == 1 and same["cosine"] == pytest.approx(1)
    swapped = ref.copy()
    swapped[0] = -swapped[0]
    bad = compare_logits(ref, swapped, "fp32")
    assert not bad["passed"] and bad["top1"] < 1 and any("max_rel" in f for f in bad["failures"])
    small = compare_logits(ref, ref + 1e-3 * np.abs(ref).max(), "fp16")
    assert small["passed"] and not compare_logits(ref, ref + 1e-3 * np.abs(ref).max(), "fp32")["passed"]


def test_compare_logits_rejects_bad_input():
    with pytest.raises(PfdeployError, match="shapes differ"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(PfdeployError, match="tolerances"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 3)), "fp8")


@pytest.mark.parametrize("side", ["reference", "artifact"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_single_non_finite_logit_fails_and_the_stats_stay_json(side, bad):
    ref = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    got = ref.copy()
    (ref if side == "reference" else got)[2, 9] = bad  # the class argsort would put last (NaN) or first
    stats = compare_logits(ref, got, "int8")  # even the loosest tolerances
    assert not stats["passed"]
    assert stats["nonfinite"] == {"reference": int(side == "reference"), "artifact": int(side == "artifact")}
    who = "the PyTorch reference" if side == "reference" else "the artifact"
    assert stats["failures"] == [f"{who}'s logits are not finite (1 NaN/Inf values)"]
    json.dumps(stats, allow_nan=False)  # strict JSON: no NaN floats in reports


def test_all_nan_on_both_sides_fails():
    nan = np.full((3, 5), np.nan, np.float32)
    stats = compare_logits(nan, nan, "fp32")
    assert not stats["passed"] and stats["nonfinite"] == {"reference": 15, "artifact": 15}
    assert stats["max_abs"] is None and stats["cosine"] is None


def test_a_report_with_non_finite_logits_fails_even_on_unjudged_sources():
    from pfdeploy.runtime.verify import VerifyReport

    ref = np.random.default_rng(0).standard_normal((4, 10))
    noisy = ref.copy()
    noisy[0, 0] = np.nan
    report = VerifyReport("m.int8.onnx", "r50", "int8", "float-nchw", "random", TOLERANCES["int8"],
                          {"random": compare_logits(ref, noisy, "int8"), "data": compare_logits(ref, ref, "int8")})
    assert report.judged_on == ["data"] and report.sources["data"]["passed"]
    assert not report.passed
    assert report.nonfinite == "the artifact's logits are not finite (1 NaN/Inf values on random)"
    text = report.format()
    assert "FAIL: the artifact's logits are not finite" in text and text.splitlines()[-1].startswith("FAIL")
    json.dumps(report.to_dict(), allow_nan=False)


def test_readme_states_the_tolerances_verify_applies():
    """The README's tolerance table is TOLERANCES, row for row (a changed tolerance must be documented)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in TOLERANCES:
            rows[cells[0]] = dict(zip(("max_rel", "cosine", "top1", "top5"), map(float, cells[1:]), strict=True))
    assert rows == TOLERANCES


def test_smooth_images_are_images():
    images = smooth_images(3, 32, seed=0)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert np.abs(np.diff(images.astype(int), axis=1)).mean() < 20  # smooth, unlike noise


def _wrong_copy(src, dst):
    """The same graph with its classifier weights scaled: a deliberately wrong artifact."""
    model = onnx.load(str(src))
    init = max(model.graph.initializer, key=lambda t: t.dims[0] if t.dims else 0)
    assert init.dims[0] == 1000
    arr = numpy_helper.to_array(init).copy()
    arr[: arr.shape[0] // 2] *= -1.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(dst))
    return dst


def test_verify_passes_and_fails(cheap_exports, tmp_path):
    path, ckpt = cheap_exports("r50_hybrid")
    report = verify_artifact(path, checkpoint=ckpt, samples=5, batch=2)
    assert report.passed, report.format()
    assert set(report.sources) == {"random", "real-looking"}
    wrong = _wrong_copy(path, tmp_path / "wrong.onnx")
    bad = verify_artifact(wrong, checkpoint=ckpt, samples=5, batch=2)
    assert not bad.passed and "FAIL" in bad.format()


def test_cli_verify_exit_codes_and_json(cheap_exports, tmp_path, capsys):
    path, ckpt = cheap_exports("vit_ti_max")
    out = tmp_path / "report.json"
    assert main(["verify", str(path), "--checkpoint", str(ckpt), "--samples", "3", "--json", str(out)]) == 0
    assert "PASS" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["passed"] and data["model"] == "vit_ti_max" and "random" in data["sources"]
    wrong = _wrong_copy(path, tmp_path / "wrong.onnx")
    assert main(["verify", str(wrong), "--checkpoint", str(ckpt), "--samples", "3"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_refuses_missing_or_wrong_checkpoint(cheap_exports, tmp_path, capsys):
    path, ckpt = cheap_exports("vit_ti_max")
    assert main(["verify", str(path), "--samples", "2"]) == 1
    assert "--checkpoint" in capsys.readouterr().err
    other = tmp_path / "other.pth"
    other.write_bytes(ckpt.read_bytes() + b"x")
    with pytest.raises(PfdeployError, match="not the one"):
        verify_artifact(path, checkpoint=other)


def test_verify_with_data_folder(cheap_exports, tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(smooth_images(1, 80, seed=i)[0]).save(tmp_path / f"{i}.png")
    path, ckpt = cheap_exports("pit_ti_max")
    report = verify_artifact(path, checkpoint=ckpt, samples=3, data=tmp_path, batch=2)
    assert report.passed and report.sources["data"]["samples"] == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(PfdeployError, match="no images"):
        verify_artifact(path, checkpoint=ckpt, data=tmp_path / "empty")
    with pytest.raises(PfdeployError, match="not a folder"):
        verify_artifact(path, checkpoint=ckpt, data=tmp_path / "missing")


def test_int8_is_judged_on_real_images_when_given():
    from pfdeploy.runtime.verify import VerifyReport, judged_sources

    failing = {"passed": False, "failures": ["top1 0.5 < 0.7"]}
    sources = {"random": failing, "real-looking": {"passed": True}, "data": {"passed": True}}
    assert judged_sources("int8", sources) == ["data"]
    assert judged_sources("fp16", sources) == ["random", "real-looking", "data"]
    assert judged_sources("int8", {"random": failing}) == ["random"]
    report = VerifyReport("a.onnx", "m", "int8", "float-nchw", "random", {}, sources)
    assert report.passed and report.to_dict()["judged_on"] == ["data"]
    report.precision = "fp32"
    assert not report.passed


def test_verify_runs_the_file_as_written(cheap_exports, monkeypatch):
    """verify runs the graph as stored: the in-memory attention fusion that runtime CPU sessions add
    (checked in test_ort_options.py) is never applied to what verify checks."""
    import onnx

    import pfdeploy.runtime.ort_options as ort_options
    from pfdeploy.runtime import load

    fused = []  # attention blocks fused per call, recorded around the real function

    def recording(model):
        fused.append(real(model))
        return fused[-1]

    real = ort_options.attention_fused_for_cpu
    monkeypatch.setattr(ort_options, "attention_fused_for_cpu", recording)
    path, ckpt = cheap_exports("vit_ti_max")
    assert verify_artifact(path, checkpoint=ckpt, samples=2, batch=2).passed
    assert fused == []  # nothing rewritten: the bytes ONNX Runtime ran are the file's
    with load(path):  # the runtime's CPU session does fuse this graph, so the check above can fail
        pass
    assert fused == [sum(n.op_type == "Softmax" for n in onnx.load(str(path)).graph.node)] and fused[0] > 0


@pytest.mark.parametrize("argv, message", [(["--samples", "100000000"], "--samples must be an integer in 1..4096"),
                                           (["--batch", "100000000"], "--batch must be an integer in 1..4096"),
                                           (["--samples", "0"], "--samples must be an integer in 1..4096")])
def test_verify_counts_are_bounded_before_any_image_is_made(cheap_exports, capsys, argv, message):
    """`--samples 100000000` tried to allocate 17.9 GiB of images (issue 20)."""
    path, _ = cheap_exports("r50")
    assert main(["verify", str(path), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
