"""predict / eval on the trained fixture (r50_hybrid on digits) through ONNX Runtime and PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pfdeploy.calibration.fixtures import get_fixture
from pfdeploy.cli import main
from pfdeploy.errors import PfdeployError
from pfdeploy.runtime.predict import evaluate, predict, top_k

FIXTURE = "r50_hybrid_digits"


@pytest.fixture(scope="module")
def fixture():
    return get_fixture(FIXTURE)


@pytest.fixture(scope="module")
def onnx_path(fixture, tmp_path_factory):
    from pfdeploy.export import onnx_from_model

    out = tmp_path_factory.mktemp("trained") / "digits.onnx"
    return onnx_from_model(fixture.model, out, checkpoint=fixture.checkpoint, num_classes=fixture.num_classes,
                           overrides=fixture.overrides)


def test_eval_reproduces_the_fixture_accuracy(fixture, onnx_path):
    report = evaluate(onnx_path, fixture.val_dir, preprocess=fixture.preprocess, progress=False)
    assert report["images"] == len(list(fixture.val_dir.glob("*/*.png"))) and report["classes"] == 10
    assert report["skipped"] == 0
    assert report["top1"] == pytest.approx(fixture.fp32_top1, abs=0.5)
    assert report["top1"] <= report["top5"] <= 100.0


def test_torch_and_onnxruntime_eval_agree(fixture, onnx_path):
    common = {"preprocess": fixture.preprocess, "progress": False, "limit": 120, "batch": 40}
    ort = evaluate(onnx_path, fixture.val_dir, **common)
    pt = evaluate(onnx_path, fixture.val_dir, backend="torch", checkpoint=fixture.checkpoint, **common)
    assert pt["backend"] == "torch" and ort["backend"] == "onnxruntime"
    assert (pt["top1"], pt["top5"]) == (ort["top1"], ort["top5"])


def test_predict_names_the_right_digit(fixture, onnx_path, tmp_path):
    images = sorted((fixture.val_dir / "7").glob("*.png"))[:4]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    results = predict(images, onnx_path, top_k_count=3, labels=labels, preprocess=fixture.preprocess)
    assert [r["image"] for r in results] == [str(p) for p in images]
    for r in results:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
    assert sum(r["top"][0]["label"] == "digit 7" for r in results) >= 3


def test_top_k_orders_best_first():
    logits = np.array([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
    assert top_k(logits, 2).tolist() == [[1, 3], [0, 1]]
    assert top_k(logits, 9).shape == (2, 4)


def test_input_errors(fixture, onnx_path, tmp_path):
    with pytest.raises(PfdeployError, match="does not exist"):
        evaluate(onnx_path, tmp_path / "nowhere", progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(next((fixture.val_dir / "1").glob("*.png")).read_bytes())
    with pytest.raises(PfdeployError, match="no class labels"):
        evaluate(onnx_path, flat, progress=False)
    bad_labels = tmp_path / "labels.txt"
    bad_labels.write_text("a\nb\n")
    image = next((fixture.val_dir / "1").glob("*.png"))
    with pytest.raises(PfdeployError, match="2 names but the model has 10"):
        predict([image], onnx_path, labels=bad_labels, preprocess=fixture.preprocess)
    with pytest.raises(PfdeployError, match="image .* not found"):
        predict([tmp_path / "missing.png"], onnx_path, preprocess=fixture.preprocess)


def test_cli_predict_and_eval(fixture, onnx_path, capsys):
    pre = json.dumps(fixture.preprocess.to_dict())
    image = sorted((fixture.val_dir / "4").glob("*.png"))[0]
    assert main(["predict", str(image), "--model", str(onnx_path), "--top-k", "2", "--preprocess", pre]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: 4 ")
    assert main(["eval", str(onnx_path), "--data", str(fixture.val_dir), "--limit", "50", "--preprocess", pre,
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 50 and report["top1"] >= 90.0


def test_static_batch_artifact_is_padded(fixture, onnx_path, tmp_path):
    from pfdeploy.export import onnx_from_model

    static = onnx_from_model(fixture.model, tmp_path / "b4.onnx", checkpoint=fixture.checkpoint, batch=4,
                             num_classes=fixture.num_classes, overrides=fixture.overrides)
    common = {"preprocess": fixture.preprocess, "progress": False, "limit": 10}
    assert evaluate(static, fixture.val_dir, **common)["top1"] == evaluate(onnx_path, fixture.val_dir,
                                                                            **common)["top1"]
    images = sorted((fixture.val_dir / "2").glob("*.png"))[:5]
    got = predict(images, static, preprocess=fixture.preprocess)
    ref = predict(images, onnx_path, preprocess=fixture.preprocess)
    assert [r["top"][0]["index"] for r in got] == [r["top"][0]["index"] for r in ref]
    assert got[0]["top"][0]["probability"] == pytest.approx(ref[0]["top"][0]["probability"], abs=1e-5)
