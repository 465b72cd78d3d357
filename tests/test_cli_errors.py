"""What a hostile or unlucky user meets on the command line: corrupt and contradictory files, outputs
that would destroy inputs, full and read-only disks. Each is one `pfdeploy: error:` line, exit 1, no
traceback, nothing written."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from tiny_graphs import (
    calibration_array,
    conv_classifier,
    damaged_copy,
    pfdeploy_metadata,
    truncated_copy,
)

from pfdeploy.cli import main

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    assert err[-1].startswith("pfdeploy: error:"), err
    assert not any(line.startswith("pfdeploy: error:") for line in err[:-1]), err
    return err[-1]


@pytest.fixture
def files(tmp_path):
    """A good tiny graph, an image, a class folder of images and calibration images."""
    good = conv_classifier(tmp_path / "m.onnx", pfdeploy_metadata())
    image = tmp_path / "cat.png"
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(image)
    for cls in ("a", "b"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        shutil.copy(image, tmp_path / "val" / cls / "x.png")
    return {"good": good, "image": image, "val": tmp_path / "val", "calib": calibration_array(tmp_path / "c.npy")}


def commands(path: Path, files: dict, tmp_path: Path) -> dict[str, list[str]]:
    """Every command that reads an ONNX file, on `path`."""
    return {
        "info": ["info", "--onnx", str(path)],
        "verify": ["verify", str(path), "--samples", "2"],
        "quantize": ["quantize", str(path), "--calib-data", str(files["calib"]), "--num-images", "8",
                     "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "q.onnx")],
        "bench": ["bench", str(path), "--batch", "1", "--seconds", "0.01", "--warmup", "1"],
        "bench-torch": ["bench", str(path), "--backend", "torch", "--batch", "1", "--seconds", "0.01"],
        **({"bench-openvino": ["bench", str(path), "--backend", "openvino", "--batch", "1", "--seconds", "0.01"]}
           if HAS_OPENVINO else {}),
        "predict": ["predict", str(files["image"]), "--model", str(path)],
        "eval": ["eval", str(path), "--data", str(files["val"])],
        "triton": ["triton", str(path), "--repo", str(tmp_path / "repo")],
    }


@pytest.mark.parametrize("damage", ["truncated", "half an initializer"])
def test_corrupt_onnx_is_refused_by_every_command(files, tmp_path, capsys, damage):
    make = truncated_copy if damage == "truncated" else damaged_copy
    bad = make(files["good"], tmp_path / "bad.onnx")
    expected = "truncated" if damage == "truncated" else "damaged: initializer"
    for name, args in commands(bad, files, tmp_path).items():
        assert main(args) == 1, name
        assert expected in one_line_error(capsys), name
    assert not (tmp_path / "repo").exists() and not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("key, value, message", [
    ("preprocess", json.dumps({"size": 8, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
                               "std": [0.0, 0.25, 0.25]}), "pfdeploy.preprocess: bad preprocess: std must be positive"),
    ("preprocess", json.dumps({"size": 8, "mean": [0.5]}), "mean must be three finite numbers"),
    ("preprocess", json.dumps({"size": 8, "crop_pct": 0}), "crop_pct must be in (0, 1]"),
    ("preprocess", json.dumps({"size": 8, "interpolation": "lanczos"}), "interpolation must be one of"),
    ("preprocess", "{size: 8", "pfdeploy.preprocess is not valid JSON"),
])
def test_bad_preprocess_metadata_is_one_line_naming_the_key(files, tmp_path, capsys, key, value, message):
    bad = conv_classifier(tmp_path / "bad.onnx", pfdeploy_metadata(**{key: value}))
    for name, args in commands(bad, files, tmp_path).items():
        if name in ("info", "triton") or name.startswith("bench"):
            continue  # they do not preprocess images
        assert main(args) == 1, name  # eval must not report an accuracy from NaN inputs
        line = one_line_error(capsys)
        assert message in line and "re-export" in line, (name, line)


def test_overrides_that_are_not_json_are_one_line(files, tmp_path, capsys):
    bad = conv_classifier(tmp_path / "bad.onnx", pfdeploy_metadata(overrides="{layers: [1,1"))
    for name in ("verify", "bench-torch"):
        assert main(commands(bad, files, tmp_path)[name]) == 1
        assert "metadata pfdeploy.overrides is not valid JSON" in one_line_error(capsys)


def test_metadata_naming_another_family_than_the_graph_is_refused(files, tmp_path, capsys):
    lying = conv_classifier(tmp_path / "resnet.onnx", pfdeploy_metadata(model="vit_s_max"))
    assert main(commands(lying, files, tmp_path)["quantize"]) == 1
    line = one_line_error(capsys)
    assert "pfdeploy.model=vit_s_max (a transformer) contradicts the graph" in line and "(a resnet)" in line
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_output_that_is_the_input_is_refused_before_any_work(files, tmp_path, capsys):
    source = files["good"]
    before = source.read_bytes()
    (tmp_path / "link.onnx").symlink_to(source)
    os.link(source, tmp_path / "hard.onnx")
    for output in (source, tmp_path / "link.onnx", tmp_path / "hard.onnx"):
        args = ["quantize", str(source), "--calib-data", str(files["calib"]), "--output", str(output),
                "--cache-dir", str(tmp_path / "cache")]
        assert main(args) == 1
        assert "is the input" in one_line_error(capsys)
    assert source.read_bytes() == before and not (tmp_path / "cache").exists()


def test_json_outputs_that_are_inputs_are_refused(files, capsys):
    good = files["good"]
    before = good.read_bytes()
    assert main(["verify", str(good), "--json", str(good)]) == 1
    assert "--json" in one_line_error(capsys)
    assert main(["bench", str(good), "--json", str(good)]) == 1
    assert "is the input" in one_line_error(capsys)
    assert good.read_bytes() == before


def test_triton_repository_holding_the_artifact_is_refused(tmp_path, capsys):
    inside = tmp_path / "repo" / "m" / "1"
    inside.mkdir(parents=True)
    model = conv_classifier(inside / "model.onnx", pfdeploy_metadata())
    assert main(["triton", str(model), "--repo", str(tmp_path / "repo"), "--name", "m"]) == 1
    assert "is the input" in one_line_error(capsys)


@pytest.mark.parametrize("command", ["quantize", "triton", "verify"])
def test_output_paths_are_checked_before_any_work(files, tmp_path, capsys, command):
    a_dir, a_file = tmp_path / "existing", tmp_path / "plain"
    a_dir.mkdir()
    a_file.write_text("x")
    good = str(files["good"])
    cases = {
        "quantize": [(["--output", str(a_dir)], "is a directory"), (["--output", str(a_file / "q.onnx")],
                                                                     "is a file, not a folder")],
        "triton": [(["--repo", str(a_file)], "is a file; give a folder"),
                   (["--repo", str(a_file / "repo")], "is a file, not a folder")],
        "verify": [(["--json", str(a_dir)], "is a directory")],
    }[command]
    base = {"quantize": ["quantize", good, "--calib-data", str(files["calib"]), "--cache-dir", str(tmp_path / "c")],
            "triton": ["triton", good], "verify": ["verify", good]}[command]
    for extra, message in cases:
        assert main([*base, *extra]) == 1
        assert message in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["existing", "plain", "m.onnx", "cat.png", "val",
                                                                  "c.npy"])


def test_full_disk_during_quantize_is_one_line_and_writes_nothing(files, tmp_path, capsys, monkeypatch):
    real_save = onnx.save

    def save_on_a_full_disk(model, path, *args, **kwargs):
        if str(path).endswith(".tmp"):  # the atomic write of the output
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(onnx, "save", save_on_a_full_disk)
    out = tmp_path / "out" / "q.onnx"
    args = ["quantize", str(files["good"]), "--calib-data", str(files["calib"]), "--num-images", "8",
            "--cache-dir", str(tmp_path / "cache"), "--output", str(out)]
    assert main(args) == 1
    line = one_line_error(capsys)
    assert f"cannot write {out}: No space left on device" in line and "free space" in line
    assert list(out.parent.iterdir()) == []


def test_full_tmpdir_is_one_line(files, tmp_path, capsys, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "tmpdir" / "pfdeploy-quant-x"))

    monkeypatch.setattr(tempfile, "mkdtemp", no_space)
    args = ["quantize", str(files["good"]), "--calib-data", str(files["calib"]), "--num-images", "8",
            "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "q.onnx")]
    assert main(args) == 1
    line = one_line_error(capsys)
    assert "No space left on device" in line and "TMPDIR" in line
    assert not (tmp_path / "q.onnx").exists()


def test_read_only_repository_is_one_line(files, tmp_path, capsys, monkeypatch):
    def read_only(src, dst, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(shutil, "copyfile", read_only)
    assert main(["triton", str(files["good"]), "--repo", str(tmp_path / "repo")]) == 1
    line = one_line_error(capsys)
    assert "Read-only file system" in line and str(tmp_path / "repo" / "m" / "1" / "model.onnx") in line
    assert not list((tmp_path / "repo").rglob("*.onnx*"))


def test_main_turns_a_leftover_filesystem_error_into_one_line_and_keeps_bugs(monkeypatch, capsys):
    import pfdeploy.cli as cli

    def fails(error):
        def run(args):
            raise error
        return run

    monkeypatch.setattr(cli, "run_list", fails(OSError(errno.ENOSPC, "No space left on device", "/out/x")))
    monkeypatch.setattr(cli, "COMMANDS", [("list", cli.add_list, cli.run_list)])
    assert main(["list"]) == 1
    assert "error: /out/x: No space left on device; free space" in one_line_error(capsys)
    monkeypatch.setattr(cli, "run_list", fails(OSError(errno.ECONNREFUSED, "Connection refused")))
    monkeypatch.setattr(cli, "COMMANDS", [("list", cli.add_list, cli.run_list)])
    with pytest.raises(OSError):  # not a filesystem problem the user can fix: a bug, with its traceback
        main(["list"])


SIGTERM_IN_MAIN = """
import os, signal, sys, time
import pfdeploy.cli as cli

before = signal.getsignal(signal.SIGTERM)
finished = []

def run(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
    finally:
        finished.append(True)  # `finally` blocks (temporary-file cleanup) run
    return 0

cli.COMMANDS = [("list", cli.add_list, run)]
code = cli.main(["list"])
print(code, bool(finished), signal.getsignal(signal.SIGTERM) is before)
"""


def test_sigterm_in_main_exits_143_and_restores_the_handler():
    """In a fresh interpreter: a test that signals its own process must not share it with other tests."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", SIGTERM_IN_MAIN], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["143", "True", "True"]
    assert "terminated (SIGTERM)" in run.stderr and "Traceback" not in run.stderr


def test_non_utf8_file_names_work_in_every_image_command(files, tmp_path, capsys):
    """Latin-1 names (not UTF-8) in class folders, calibration folders and on the command line."""
    import subprocess
    import sys

    odd = tmp_path / "odd"
    for cls in (b"a", b"caf\xe9"):
        folder = os.path.join(os.fsencode(odd), cls)
        os.makedirs(folder)
        shutil.copy(files["image"], os.path.join(folder, b"\xff-image.png"))
    image = os.fsdecode(os.path.join(os.fsencode(odd), b"a", b"\xff-image.png"))
    # eval maps class folders by name: numeric ones (output indices) inside a Latin-1 folder, Latin-1 files.
    labelled = os.path.join(os.fsencode(tmp_path), b"val-\xe9")
    for cls in (b"0", b"1"):
        os.makedirs(os.path.join(labelled, cls))
        shutil.copy(files["image"], os.path.join(labelled, cls, b"\xff-image.png"))
    assert main(["eval", str(files["good"]), "--data", os.fsdecode(labelled), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2
    assert main(["quantize", str(files["good"]), "--calib-data", str(odd), "--cache-dir", str(tmp_path / "c"),
                 "--output", str(tmp_path / "q.onnx")]) == 0
    capsys.readouterr()
    # A strict UTF-8 terminal: the name is printed as the bytes it is, not a UnicodeEncodeError.
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    run = subprocess.run([sys.executable, "-m", "pfdeploy.cli", "predict", image, "--model", str(files["good"])],
                         env=env, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert run.stdout.startswith(os.fsencode(image) + b": ")
