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
