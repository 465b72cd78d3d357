"""`deploy` refuses, before any work, what would end badly (issue 19, items 7 and 11): a benchmark batch
no artifact declares or memory cannot hold, and an --out folder holding the user's own files."""

from __future__ import annotations

import pytest

from pfdeploy.cli import main
from pfdeploy.deploy import options_for_fixture
from pfdeploy.deploy.options import check_options
from pfdeploy.deploy.state import STATE_FILE
from pfdeploy.errors import PfdeployError

FIXTURE = "r50_hybrid_digits"


@pytest.fixture
def no_work(monkeypatch):
    """A tripwire: the export, deploy's first step, fails the test at once if a refusal came too late."""
    from pfdeploy.deploy import steps

    def started(*args, **kwargs):
        raise AssertionError("deploy started work before refusing")

    monkeypatch.setattr(steps, "export_fp32", started)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pfdeploy: error: "), err
    return err[0]


def test_a_bench_batch_over_the_largest_declared_batch_is_refused_up_front(tmp_path, capsys, no_work):
    out = tmp_path / "out"
    assert main(["deploy", "--fixture", FIXTURE, "--bench-batch", "1,100000", "--out", str(out)]) == 1
    assert "--bench-batch 100000 is over" in one_line_error(capsys)
    assert not out.exists()  # nothing exported, verified or quantized


def test_a_bench_batch_memory_cannot_hold_is_refused_up_front(tmp_path, monkeypatch, capsys, no_work):
    from pfdeploy.runtime import bench

    per_image = bench.model_bytes_per_image("r50_hybrid", {"layers": [1, 1, 1, 1], "base_width": 8,
                                                           "img_size": 32})
    monkeypatch.setattr(bench, "available_memory", lambda: 4096 * per_image - 1)
    out = tmp_path / "out"
    assert main(["deploy", "--fixture", FIXTURE, "--bench-batch", "1,4096", "--out", str(out)]) == 1
    line = one_line_error(capsys)
    assert "--bench-batch 4096 needs at least" in line and "available" in line
    assert not out.exists()
    monkeypatch.setattr(bench, "available_memory", lambda: 4096 * per_image)
    assert check_options(options_for_fixture(FIXTURE, out, bench_batches=(1, 4096))).bench_batches == (1, 4096)


def test_out_holding_files_of_the_user_is_refused_unless_forced(tmp_path, capsys, no_work):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    with pytest.raises(PfdeployError, match="not a pfdeploy output folder.*--force"):
        check_options(options_for_fixture(FIXTURE, out))
    assert main(["deploy", "--fixture", FIXTURE, "--out", str(out)]) == 1
    assert "--out" in one_line_error(capsys)
    assert (out / "report.md").read_text() == "my own report" and sorted(p.name for p in out.iterdir()) == [
        "report.md"]
    assert check_options(options_for_fixture(FIXTURE, out, force=True)).force  # the user said so


@pytest.mark.parametrize("content", ["nothing", "state", "temporary"])
def test_out_that_is_empty_or_a_pfdeploy_output_is_accepted(tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    if content == "state":
        (out / STATE_FILE).write_text('{"steps": {}}')
        (out / "report.md").write_text("written by the previous run")
    elif content == "temporary":
        (out / ".r50_hybrid_digits.fp32.onnx.999999.abcdefgh.tmp").write_bytes(b"left by a killed run")
    assert check_options(options_for_fixture(FIXTURE, out)).out == out


def _named_val(tmp_path, per_class: int = 4):
    """The fixture's held-out digits with class folders named by word, and the labels file naming them."""
    import shutil

    from pfdeploy.calibration.fixtures import get_fixture

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    val = tmp_path / "val-named"
    for index, word in enumerate(words):
        (val / word).mkdir(parents=True)
        for image in sorted((get_fixture(FIXTURE).val_dir / str(index)).iterdir())[:per_class]:
            shutil.copy(image, val / word / image.name)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(words) + "\n")
    return val, labels


def test_val_data_named_by_class_names_needs_labels_and_is_refused_before_any_work(tmp_path, capsys, no_work):
    """Class folders named by words failed deploy's accuracy step only after export and quantize (issue 19)."""
    val, _ = _named_val(tmp_path, per_class=1)
    out = tmp_path / "out"
    assert main(["deploy", "--fixture", FIXTURE, "--val-data", str(val), "--out", str(out)]) == 1
    assert "are not among the 10 class names given" in one_line_error(capsys) and not out.exists()


def test_deploy_labels_map_named_class_folders_by_name(tmp_path, capsys):
    val, labels = _named_val(tmp_path)
    out = tmp_path / "out"
    code = main(["deploy", "--fixture", FIXTURE, "--precision", "fp32", "--val-data", str(val), "--labels",
                 str(labels), "--openvino", "no", "--bench-batch", "1", "--bench-seconds", "0.05",
                 "--verify-samples", "2", "--out", str(out), "--json"])
    import json

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    reference = report["accuracy_reference"]
    assert reference["images"] == 40 and reference["top1"] >= 90  # by name; by position it would be ~10 %
