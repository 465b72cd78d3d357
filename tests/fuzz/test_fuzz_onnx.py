"""Fuzzing the ONNX readers: `load_onnx`, `check-trt`, `info --onnx`, and `runtime.load` with ONNX Runtime and
OpenVINO; and the external-data locations that `pfdeploy triton` copies.

Issue 20: `core.read_model` raised RuntimeError (an undefined node input) where onnxruntime gave one line;
issue 19: an external-data location of /etc/passwd was copied into the Triton repository.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import pytest
from hypothesis import strategies as st
from onnx import helper
from tiny_graphs import conv_classifier, pfdeploy_metadata

from fuzz.harness import check_reader, fuzz_tests, keep_last, mutated_bytes
from pfdeploy._onnxfile import external_data_files, load_onnx
from pfdeploy.engines.trt_check import check_trt
from pfdeploy.errors import PfdeployError
from pfdeploy.export import describe_onnx
from pfdeploy.runtime import load

with tempfile.TemporaryDirectory() as _folder:
    SEED = conv_classifier(Path(_folder) / "m.onnx", pfdeploy_metadata()).read_bytes()


def _is_model(model) -> None:
    assert isinstance(model, onnx.ModelProto) and model.graph.node


def _is_session(session) -> None:
    try:
        assert session.input_spec is not None and session.backend in ("onnxruntime", "openvino")
    finally:
        session.close()


def check(data: bytes) -> None:
    keep_last(data)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        path.write_bytes(data)
        here = Path(folder)
        check_reader("onnx", lambda: load_onnx(path), here, _is_model)
        check_reader("check-trt", lambda: check_trt(path), here, lambda r: r.to_dict())
        check_reader("info --onnx", lambda: describe_onnx(path), here, lambda info: info["nodes"])
        check_reader("onnx via onnxruntime", lambda: load(path, backend="onnxruntime"), here, _is_session)
        check_reader("onnx via openvino", lambda: load(path, backend="openvino"), here, _is_session)


test_fuzz_onnx, test_fuzz_onnx_long = fuzz_tests("onnx", mutated_bytes(SEED), check)

LOCATIONS = st.one_of(
    st.sampled_from(["w.data", "/etc/passwd", "../../../../../../etc/passwd", "sub/../w.data", "sub/../../w.data",
                     "./w.data", "", ".", "..", "sub", "fifo", "link", "C:\\w.data", "\\\\host\\share\\w",
                     "w.data\x00x", "missing.data"]),
    st.text(max_size=24))
NUMBERS = st.one_of(st.none(), st.sampled_from(["0", "8", "64", "-100", "abc", "1e3", " 8", "99999999999999999999",
                                                 "٣"]), st.text(max_size=8))


@st.composite
def external_models(draw) -> tuple[str, str | None, str | None]:
    return draw(LOCATIONS), draw(NUMBERS), draw(NUMBERS)


def _external_graph(folder: Path, location: str, offset: str | None, length: str | None) -> Path:
    """MatMul by a 4x4 initializer stored outside the graph at `location` (w.data holds its 64 bytes)."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    (folder / "w.data").write_bytes(np.ones((4, 4), np.float32).tobytes())
    (folder / "sub").mkdir()
    (folder / "link").symlink_to(Path("/etc/passwd") if Path("/etc/passwd").exists() else folder / "w.data")
    import os

    os.mkfifo(folder / "fifo")
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def _inside(folder: Path):
    def valid(files) -> None:
        for file in files:
            assert file.resolve().is_relative_to(folder.resolve()) and file.is_file(), file

    return valid


def check_external(entries: tuple[str, str | None, str | None]) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        path = _external_graph(folder, *entries)
        check_reader("onnx external data", lambda: load_onnx(path), folder, _is_model)
        check_reader("triton external data", lambda: external_data_files(path), folder, _inside(folder))
        check_reader("check-trt external data", lambda: check_trt(path), folder, lambda r: r.to_dict())


test_fuzz_external_data, test_fuzz_external_data_long = fuzz_tests("external_data", external_models(),
                                                                    check_external)


def test_the_seed_loads_everywhere(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(SEED)
    for backend in ("onnxruntime", "openvino"):
        with load(path, backend=backend) as session:
            assert session.input_spec.image_size == 8


def test_an_undefined_node_input_is_one_line_for_openvino_too(tmp_path):
    """OpenVINO's read_model raised RuntimeError where onnxruntime gave one line (issue 20)."""
    from onnx import TensorProto

    graph = helper.make_graph([helper.make_node("Relu", ["nope"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "undefined.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(PfdeployError) as err:
            load(path, backend=backend)
        assert "\n" not in str(err.value) and "nope" in str(err.value), backend
    assert "OpenVINO is not given it" in str(err.value)  # onnx.checker refuses it first


def test_a_graph_openvino_cannot_convert_is_one_line(tmp_path):
    """A checker-valid graph with an op OpenVINO has no conversion for: core.read_model's RuntimeError, wrapped."""
    from onnx import TensorProto

    graph = helper.make_graph([helper.make_node("Bar", ["x"], ["y"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), path)
    with pytest.raises(PfdeployError, match=r"OpenVINO cannot read .*com\.example\.Bar") as err:
        load(path, backend="openvino")
    assert "\n" not in str(err.value)
