"""verify_artifact / compare_logits / `pfdeploy verify`: PASS on faithful graphs, FAIL on wrong ones."""

from __future__ import annotations

import json

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


def test_tolerances_tighten_with_precision():
    assert TOLERANCES["fp32"]["max_rel"] < TOLERANCES["fp16"]["max_rel"] < TOLERANCES["int8"]["max_rel"]


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
