"""Fuzzing the TensorRT operator table (`check-trt --trt-version FILE.json`): `load_matrix`, then
`check_trt` with the table it returns.

Issue 20: 28 of 155 inputs gave UnicodeDecodeError (`read_text()` outside the JSON error handling),
`"rules": 5` a TypeError, `"tensor_types": [1]` an AttributeError, deep JSON a RecursionError.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from tiny_graphs import conv_classifier, pfdeploy_metadata

from fuzz.harness import check_reader, fuzz_tests, mutated_json
from pfdeploy.engines import trt_matrix
from pfdeploy.engines.trt_check import check_trt
from pfdeploy.engines.trt_matrix import OperatorMatrix, load_matrix
from pfdeploy.errors import PfdeployError

TABLE = json.loads((Path(trt_matrix.__file__).parent / "data" / "onnx-tensorrt-operators-10.1.json").read_text())
TABLE.pop("tensorrt_version")
# A smaller seed (the ops of the tiny graph plus a few): mutations then land on the fields that matter.
KEEP = ("Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm", "MaxPool", "QuantizeLinear", "Cast")
SEED = {**TABLE, "operators": {op: row for op, row in TABLE["operators"].items() if op in KEEP}}
NAME = "onnx-tensorrt-operators-99.0.json"

with tempfile.TemporaryDirectory() as _folder:
    GRAPH = conv_classifier(Path(_folder) / "m.onnx", pfdeploy_metadata()).read_bytes()


def check(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        table, graph = folder / NAME, folder / "m.onnx"
        table.write_bytes(text)
        graph.write_bytes(GRAPH)

        def valid(matrix) -> None:
            assert isinstance(matrix, OperatorMatrix)
            check_reader("trt table via check-trt", lambda: check_trt(graph, matrix).to_dict(), folder)

        check_reader("trt table", lambda: load_matrix(table), folder, valid)


test_fuzz_trt_table, test_fuzz_trt_table_long = fuzz_tests("trt_table", mutated_json(SEED), check)


def test_the_seed_table_checks_the_graph(tmp_path):
    table = tmp_path / NAME
    table.write_text(json.dumps(SEED))
    graph = tmp_path / "m.onnx"
    graph.write_bytes(GRAPH)
    assert check_trt(graph, load_matrix(table)).passed


@pytest.mark.parametrize("text, words", [
    ("\xff".encode("latin-1") + json.dumps(SEED).encode(), "not UTF-8 text"),  # UnicodeDecodeError today
    (json.dumps({**SEED, "source": "caf\xe9"}, ensure_ascii=False).encode("latin-1"), "not UTF-8 text"),
    (json.dumps({**SEED, "rules": 5}).encode(), "rules must be a list of strings"),  # TypeError
    (json.dumps({**SEED, "tensor_types": [1]}).encode(), "tensor_types must be a list of strings"),  # AttributeError
    (json.dumps({**SEED, "errata": [{"a": 1}]}).encode(), "errata must be a list of strings"),
    (json.dumps({**SEED, "opset_range": [True, 20]}).encode(), "opset_range must be [low, high] integers"),
    (json.dumps({**SEED, "operators": {"Conv": {"supported": True, "types": [7]}}}).encode(),
     "'types' must be a list of type names"),
    (json.dumps({**SEED, "operators": {"Conv": {"supported": True, "restrictions": ["x"]}}}).encode(),
     "'restrictions' must be text"),
    (('{"rules": ' + "[" * 100_000 + "]" * 100_000 + "}").encode(), "nested deeper than 64 levels"),  # RecursionError
])
def test_malformed_tables_are_one_line(tmp_path, capsys, text, words):
    from pfdeploy.cli import main

    table = tmp_path / NAME
    table.write_bytes(text)
    with pytest.raises(PfdeployError, match="is malformed") as err:
        load_matrix(table)
    assert words in str(err.value) and "\n" not in str(err.value)
    graph = tmp_path / "m.onnx"
    graph.write_bytes(GRAPH)
    assert main(["check-trt", str(graph), "--trt-version", str(table)]) == 1
    out = capsys.readouterr().err
    assert words in out and out.count("\n") == 1


def test_a_fifo_table_is_refused_without_hanging(tmp_path):
    import os

    from fuzz.harness import no_hang

    os.mkfifo(tmp_path / NAME)
    with no_hang(20), pytest.raises(PfdeployError, match="is a FIFO, not a regular file"):
        load_matrix(tmp_path / NAME)
