"""The one ONNX loader: each way a file can be wrong gets its own one-line error."""

from __future__ import annotations

import builtins

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
