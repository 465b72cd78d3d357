"""The one ONNX loader: each way a file can be wrong gets its own one-line error."""

from __future__ import annotations

import builtins
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfdeploy._onnxfile import load_onnx
from pfdeploy.errors import PfdeployError


def matmul_model(weight: np.ndarray | None = None) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32) if weight is None else weight, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    return helper.make_model(graph)


def test_a_good_file_loads(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(matmul_model(), path)
    assert load_onnx(path).graph.node[0].name == "mm"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PfdeployError, match="not found; export one"):
        load_onnx(tmp_path / "absent.onnx")
    with pytest.raises(PfdeployError, match="is a directory"):
        load_onnx(tmp_path)


def test_unreadable_file_is_not_called_a_non_onnx_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    onnx.save(matmul_model(), path)
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(PfdeployError, match="cannot read .*Permission denied; check the file's permissions") as err:
        load_onnx(path)
    assert "not an ONNX model" not in str(err.value)


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(matmul_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PfdeployError, match="not an ONNX model, or is truncated"):
        load_onnx(path)
    path.write_text("not a model")
    with pytest.raises(PfdeployError, match="not an ONNX model"):
        load_onnx(path)


def test_initializer_with_half_its_bytes_is_damaged(tmp_path):
    model = matmul_model()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:32]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(PfdeployError, match="damaged: initializer 'w' holds 32 bytes where shape \\[4, 4\\] needs 64"):
        load_onnx(path)
    assert load_onnx(path, check_data=False).graph.initializer[0].name == "w"


def test_typed_initializer_with_too_few_values_is_damaged(tmp_path):
    model = matmul_model()
    typed = model.graph.initializer[0]
    typed.ClearField("raw_data")
    typed.float_data.extend([1.0] * 8)  # 8 of the 16 values its shape declares
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(PfdeployError, match="holds 8 values where shape \\[4, 4\\] needs 16"):
        load_onnx(path)


def test_external_data_checked(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(matmul_model(np.ones((64, 4), np.float32)[:4]), path, save_as_external_data=True,
              all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    assert np.asarray(numpy_helper.to_array(load_onnx(path).graph.initializer[0])).sum() == 16
    (tmp_path / "m.data").write_bytes(b"\x00" * 8)
    with pytest.raises(PfdeployError, match="shorter than declared"):
        load_onnx(path)
    (tmp_path / "m.data").unlink()
    with pytest.raises(PfdeployError, match="external data file 'm.data' is missing"):
        load_onnx(path)


def _external_model(tmp_path, **entries) -> Path:
    """m.onnx whose initializer `w` names external data with the given entries (location, offset, length)."""
    path = tmp_path / "m.onnx"
    onnx.save(matmul_model(), path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    model = onnx.load(path, load_external_data=False)
    tensor = model.graph.initializer[0]
    info = {e.key: e.value for e in tensor.external_data}
    info.update(entries)
    del tensor.external_data[:]
    for key, value in info.items():
        tensor.external_data.add(key=key, value=value)
    onnx.save(model, path)
    return path


HOSTILE_LOCATIONS = [
    ({"location": "/etc/passwd"}, "an absolute path"),
    ({"location": "../../../../../../etc/passwd"}, "outside the model's folder"),
    ({"location": "sub/../../x.data"}, "outside the model's folder"),
    ({"length": "abc"}, "length of 'abc', not a non-negative integer"),
    ({"offset": "-100"}, "offset of '-100', not a non-negative integer"),
]


@pytest.mark.parametrize("entries, words", HOSTILE_LOCATIONS)
def test_external_data_must_be_a_relative_regular_file_inside_the_folder(tmp_path, entries, words):
    """onnx's ValidationError (absolute, escaping) and ValueError (length/offset) were tracebacks (issue 20)."""
    path = _external_model(tmp_path, **entries)
    for kwargs in ({}, {"external_data": False}, {"external_data": False, "check_data": False}):
        with pytest.raises(PfdeployError, match=re.escape(words)) as err:
            load_onnx(path, **kwargs)
        assert "\n" not in str(err.value) and "relative path to a regular file inside the model's folder" in \
            str(err.value)


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 64)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "w.data").symlink_to(secret)
    path = _external_model(model_dir, location="w.data")
    with pytest.raises(PfdeployError, match="outside the model's folder"):
        load_onnx(path, external_data=False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_is_refused_before_it_is_opened(tmp_path):
    from fuzz.harness import no_hang

    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)  # `bench`, `check-trt` and `info --onnx` hung on it until killed
    with no_hang(20), pytest.raises(PfdeployError, match="is a FIFO, not a regular file"):
        load_onnx(fifo)
    data_fifo = tmp_path / "d"
    data_fifo.mkdir()
    path = _external_model(data_fifo, location="w.fifo")
    os.mkfifo(data_fifo / "w.fifo")
    with no_hang(20), pytest.raises(PfdeployError, match="not a regular file"):
        load_onnx(path)


@pytest.mark.parametrize("command", [["check-trt"], ["info", "--onnx"], ["triton", "--repo", "REPO"]])
@pytest.mark.parametrize("entries, words", HOSTILE_LOCATIONS[:2])
def test_cli_readers_refuse_hostile_external_data_and_copy_nothing(tmp_path, capsys, command, entries, words):
    """`triton` copied /etc/passwd into the repository with exit 0 (issue 19, item 1); `info` and
    `check-trt` stopped with a traceback."""
    from pfdeploy.cli import main

    path = _external_model(tmp_path, **entries)
    repo = tmp_path / "repo"
    argv = [str(repo) if a == "REPO" else a for a in command]
    argv = [argv[0], str(path), *argv[1:]] if argv[0] != "info" else [*argv, str(path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not repo.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
@pytest.mark.parametrize("command", [["check-trt", "FIFO"], ["info", "--onnx", "FIFO"],
                                     ["bench", "FIFO", "--seconds", "0.01"]])
def test_cli_commands_refuse_a_fifo_onnx_without_hanging(tmp_path, capsys, command):
    from fuzz.harness import no_hang

    from pfdeploy.cli import main

    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    with no_hang(20):  # these hung until killed (issue 20)
        assert main([str(fifo) if a == "FIFO" else a for a in command]) == 1
    err = capsys.readouterr().err
    assert "is a FIFO, not a regular file" in err and err.count("\n") == 1
