"""`pfdeploy quantize`: writes the graph, prints INT8/float placement; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import onnx

from pfdeploy.calibration.fixtures import get_fixture
from pfdeploy.cli import main

DIGITS = Path(__file__).resolve().parents[1] / "fixtures" / "digits"


def test_quantize_command_prints_placement(fixture_onnx, tmp_path, capsys):
    out = tmp_path / "r.int8.onnx"
    code = main(["quantize", str(fixture_onnx("r50_hybrid_digits")), "--calib-data", str(DIGITS / "calib"),
                 "--num-images", "32", "--method", "minmax", "--output", str(out), "--cache-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0 and onnx.load(out).graph.node
    assert "MaxPool      int8" in printed and "ReduceMean   float" in printed
    assert "ONNX Runtime CPU kernels, int8:" in printed and f"wrote {out}" in printed


def test_quantize_command_bad_input_is_one_line(tmp_path, capsys):
    bogus = tmp_path / "x.onnx"
    bogus.write_bytes(b"\x00garbage")
    assert main(["quantize", str(bogus), "--calib-data", str(DIGITS / "calib")]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "not an ONNX model" in err.splitlines()[-1]
    empty = tmp_path / "empty"
    empty.mkdir()
    fx = get_fixture("r50_hybrid_digits")
    assert main(["quantize", str(fx.checkpoint), "--calib-data", str(empty)]) == 1
    assert "not an ONNX model" in capsys.readouterr().err


def test_val_data_without_a_use_is_refused_before_any_work(tmp_path, capsys):
    """--val-data alone would be read by nothing: one line, not a silently ignored option."""
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(tmp_path / "m.onnx"), "--calib-data", str(DIGITS / "calib"),
                 "--val-data", str(DIGITS / "val"), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--val-data is read only by --max-drop and --analyze" in err
    assert not out.exists()
