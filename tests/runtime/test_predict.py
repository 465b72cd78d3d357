"""predict / eval on the trained fixture (r50_hybrid on digits) through ONNX Runtime and PyTorch."""

from __future__ import annotations

import json
import re

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


def test_a_missing_or_non_utf8_labels_file_is_one_line(fixture, onnx_path, tmp_path, capsys):
    """FileNotFoundError and UnicodeDecodeError tracebacks today (issue 20)."""
    image = str(next((fixture.val_dir / "1").glob("*.png")))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("\n".join(f"caf\xe9 {i}" for i in range(10)).encode("latin-1"))
    pre = json.dumps(fixture.preprocess.to_dict())
    for labels, words in ((tmp_path / "missing.txt", "labels file .* not found"), (latin1, "is not UTF-8 text")):
        assert main(["predict", image, "--model", str(onnx_path), "--preprocess", pre, "--labels", str(labels)]) == 1
        err = capsys.readouterr().err
        assert re.search(words, err) and err.count("\n") == 1 and "Traceback" not in err


def test_a_16_bit_png_predicts_the_class_of_its_8_bit_original(fixture, onnx_path, tmp_path):
    """A 16-bit PNG (I;16) went through convert("RGB"), which saturates every non-zero pixel: a confident
    wrong class (issue 19, item 6)."""
    from PIL import Image

    originals = sorted((fixture.val_dir / "0").glob("*.png"))[:4]
    sixteen = []
    for i, path in enumerate(originals):
        grey = np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 257
        sixteen.append(tmp_path / f"{i}.png")
        Image.fromarray(grey).save(sixteen[-1])
    want = predict(originals, onnx_path, preprocess=fixture.preprocess)
    got = predict(sixteen, onnx_path, preprocess=fixture.preprocess)
    assert [r["top"][0]["index"] for r in got] == [r["top"][0]["index"] for r in want] == [0] * 4
    for a, b in zip(got, want, strict=True):
        assert a["top"][0]["probability"] == pytest.approx(b["top"][0]["probability"], abs=1e-6)


def _subset(fixture, tmp_path, folders, rename=lambda name: name):
    """A val set of the fixture holding only `folders` (10 images each), renamed by `rename`."""
    root = tmp_path / "val"
    for name in folders:
        (root / rename(name)).mkdir(parents=True)
        for image in sorted((fixture.val_dir / name).glob("*.png"))[:10]:
            (root / rename(name) / image.name).write_bytes(image.read_bytes())
    return root


@pytest.mark.parametrize("folders", [[str(c) for c in range(1, 10)], ["3"], ["7", "9"]])
def test_eval_maps_class_folders_by_name_not_position(fixture, onnx_path, tmp_path, folders):
    """Without folder 0 the mapping by position gave top-1 0.00% (exit 0); a folder holding only 3/ too."""
    report = evaluate(onnx_path, _subset(fixture, tmp_path, folders), preprocess=fixture.preprocess, progress=False)
    assert report["classes"] == len(folders) and report["top1"] >= 90.0


def test_eval_maps_named_folders_through_labels_and_refuses_a_guess(fixture, onnx_path, tmp_path, capsys):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    data = _subset(fixture, tmp_path, ["2", "8"], rename=lambda n: names[int(n)])
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names) + "\n")
    common = {"preprocess": fixture.preprocess, "progress": False}
    assert evaluate(onnx_path, data, labels=labels, **common)["top1"] >= 90.0
    assert evaluate(onnx_path, data, labels=names, **common)["top1"] >= 90.0  # a fixture's class names
    with pytest.raises(PfdeployError, match="named by class names .* give the model's class names with --labels"):
        evaluate(onnx_path, data, **common)  # positions would give a number without meaning
    with pytest.raises(PfdeployError, match="not among the 10 class names given"):
        evaluate(onnx_path, data, labels=[n.upper() for n in names], **common)
    with pytest.raises(PfdeployError, match="3 class names were given but the model has 10"):
        evaluate(onnx_path, data, labels=["two", "eight", "x"], **common)
    big = _subset(fixture, tmp_path / "big", ["2"], rename=lambda n: "12")
    with pytest.raises(PfdeployError, match="has a class 12 but the model's outputs are 0..9"):
        evaluate(onnx_path, big, **common)
    pre = json.dumps(fixture.preprocess.to_dict())
    assert main(["eval", str(onnx_path), "--data", str(data), "--preprocess", pre, "--labels", str(labels),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] >= 90.0


@pytest.mark.parametrize("value, words", [
    ('{"mean": ' + "[" * 5000 + "]" * 5000 + "}", "nests deeper than 64 levels"),  # a RecursionError today
    ('{"size": 32, "interpolation": ["bilinear"]}', "interpolation must be one of"),  # TypeError (unhashable)
    ('{"size": 32, "mean": [1e400, 0, 0]}', "mean must be three finite numbers"),
    ('{"size": 32, "mean": [' + "9" * 400 + ', 0, 0]}', "mean must be three finite numbers"),  # OverflowError
    ('{"size": 100000000}', "size must be an integer >= 1 and <= 4096"),
    ('{"size": 32, "crop_pct": 1e-300}', "size / crop_pct (the resize before the crop) must be at most 4096"),
    ("[1, 2]", "expected a JSON object"),
])
def test_preprocess_option_values_are_one_line(value, words):
    from pfdeploy.calibration.preprocess import preprocess_from_option

    with pytest.raises(PfdeployError, match=re.escape(words)) as err:
        preprocess_from_option(value)
    assert "\n" not in str(err.value)


def test_preprocess_option_file_non_utf8_or_fifo(tmp_path):
    import os

    from fuzz.harness import no_hang

    from pfdeploy.calibration.preprocess import preprocess_from_option

    bad = tmp_path / "pre.json"
    bad.write_bytes(b'{"size": 32, "interpolation": "bil\xe9"}')
    with pytest.raises(PfdeployError, match="is not UTF-8 text"):
        preprocess_from_option(str(bad))  # UnicodeDecodeError today
    good = tmp_path / "good.json"
    good.write_text('{"size": 32, "crop_pct": 1.0}')
    assert preprocess_from_option(str(good)).size == 32
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.json")
        with no_hang(20), pytest.raises(PfdeployError, match="is a FIFO"):
            preprocess_from_option(str(tmp_path / "fifo.json"))
