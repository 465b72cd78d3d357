"""`pfdeploy build-engine` error paths that run anywhere: bad input exits 1, missing TensorRT exits 2,
one line each, and nothing is written."""

from __future__ import annotations

import importlib.util

import pytest

from pfdeploy.cli import main

needs_no_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None,
    reason="TensorRT is installed here; the missing-TensorRT path cannot run",
)


def _files(folder):
    return sorted(p.name for p in folder.rglob("*"))


@needs_no_tensorrt
def test_missing_tensorrt_is_one_line_exit_2_and_writes_nothing(make_onnx, tmp_path, capsys):
    onnx_path = make_onnx()
    before = _files(tmp_path)
    code = main(["build-engine", str(onnx_path), "--timing-cache", str(tmp_path / "c.cache"), "--inspect"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "TensorRT is not installed" in err[0] and "pfdeploy[tensorrt]" in err[0]
    assert _files(tmp_path) == before


@needs_no_tensorrt
def test_library_raises_missing_dependency(make_onnx):
    from pfdeploy.engines import engine_from_onnx
    from pfdeploy.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match="pfdeploy\\[tensorrt\\]"):
        engine_from_onnx(make_onnx())


@pytest.mark.parametrize(
    "args, words",
    [
        (["--batch", "8,1,32"], "min <= opt <= max"),
        (["--batch", "x"], "integers"),
        (["--workspace", "0"], "positive size"),
    ],
)
def test_bad_options_exit_1_before_looking_for_tensorrt(make_onnx, tmp_path, capsys, args, words):
    onnx_path = make_onnx()
    before = _files(tmp_path)
    assert main(["build-engine", str(onnx_path), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert _files(tmp_path) == before


def test_missing_onnx_exits_1(tmp_path, capsys):
    assert main(["build-engine", str(tmp_path / "nope.onnx")]) == 1
    assert "nope.onnx not found" in capsys.readouterr().err


def test_dynamic_image_size_exits_1(make_onnx, capsys):
    assert main(["build-engine", str(make_onnx(extra_dynamic=True))]) == 1
    assert "--img-size" in capsys.readouterr().err


def test_output_may_not_overwrite_the_onnx(make_onnx, capsys):
    path = make_onnx()
    assert main(["build-engine", str(path), "--output", str(path)]) == 1
    assert "overwrite the ONNX" in capsys.readouterr().err


def test_opt_level_out_of_range_is_an_argparse_error(make_onnx):
    with pytest.raises(SystemExit) as exc:
        main(["build-engine", str(make_onnx()), "--opt-level", "7"])
    assert exc.value.code == 2


def test_engines_package_imports_its_optional_dependencies_lazily():
    import subprocess
    import sys

    code = (  # `before`: cuda-bindings installs a .pth file that imports `cuda` at interpreter start
        "import sys; before = set(sys.modules); import pfdeploy.cli, pfdeploy.engines; "
        "print(sorted(m for m in ('tensorrt', 'cuda', 'onnx', 'tqdm') if m in sys.modules and m not in before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
