"""`pfdeploy export` and `pfdeploy info --onnx` from the command line."""

from __future__ import annotations

import json

from pfdeploy.cli import main


def test_cli_export_fp16_uint8_then_info_and_verify(tmp_path, capsys, caplog):
    out = tmp_path / "v.onnx"
    args = ["export", "vit_ti_max", "--img-size", "64", "--precision", "fp16", "--input-format", "uint8-nhwc",
            "--batch", "4", "--output", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert str(out) in captured.out and "random" in captured.out
    assert "RANDOM weights" in caplog.text  # stated loudly (on stderr outside pytest)
    assert main(["info", "--onnx", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"][0] == {"name": "input", "dtype": "uint8", "shape": [4, 64, 64, 3]}
    assert info["metadata"]["pfdeploy.precision"] == "fp16" and info["node_counts"]["MaxPool"] == 6
    assert main(["verify", str(out), "--samples", "4"]) == 0  # random weights rebuilt from the seed
    assert "PASS" in capsys.readouterr().out


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "nosuchnet", "--output", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model" in err
    assert main(["export", "r50", "--opset", "11", "--output", str(tmp_path / "x.onnx")]) == 1
    assert "opset 11" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_of_a_narrow_checkpoint_with_num_classes_and_overrides(tmp_path, capsys):
    import torch

    from pfdeploy.export import read_metadata
    from pfdeploy.models import create_model

    overrides = {"layers": [1, 1, 1, 1], "base_width": 8, "img_size": 32}
    ckpt = tmp_path / "narrow.pth"
    torch.save(create_model("r50_hybrid", num_classes=4, **overrides).state_dict(), ckpt)
    out = tmp_path / "narrow.onnx"
    assert main(["export", "r50_hybrid", "--checkpoint", str(ckpt), "--num-classes", "4", "--override",
                 "layers=[1,1,1,1]", "--override", "base_width=8", "--override", "img_size=32",
                 "--output", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["pfdeploy.num_classes"] == "4" and json.loads(meta["pfdeploy.overrides"]) == overrides
    capsys.readouterr()
    assert main(["info", "--onnx", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["shape"] == ["batch", 4]
    for bad, message in ((["--override", "base_width"], "KEY=VALUE"), (["--override", "no_such=1"], "bad override"),
                         (["--num-classes", "0"], "--num-classes must be >= 1")):
        assert main(["export", "r50_hybrid", *bad, "--output", str(tmp_path / "bad.onnx")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_export_outputs_are_checked_before_the_export(tmp_path, capsys):
    ckpt = tmp_path / "weights.pth"
    ckpt.write_bytes(b"not even read")
    folder, plain = tmp_path / "folder", tmp_path / "plain"
    folder.mkdir()
    plain.write_text("x")
    cases = [(["--output", str(folder)], "is a directory"),
             (["--output", str(plain / "m.onnx")], "is a file, not a folder"),
             (["--checkpoint", str(ckpt), "--output", str(ckpt)], "is the input")]
    for args, message in cases:
        assert main(["export", "r50", *args]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert ckpt.read_bytes() == b"not even read" and list(folder.iterdir()) == []
