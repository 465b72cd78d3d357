"""The TensorRT compatibility check: the operator tables (data), each rule on a hand-made graph, the
`check-trt` and `info --onnx` commands, and `build-engine` refusing a graph before TensorRT is imported."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfdeploy.cli import main
from pfdeploy.engines import trt_matrix
from pfdeploy.engines.trt_check import RULES, check_trt, require_trt_compatible, trt_violations
from pfdeploy.engines.trt_matrix import DEFAULT_TRT_VERSION, available_versions, load_matrix, matrix_from_dict
from pfdeploy.errors import PfdeployError

F32, F16, U8, I8, I32, I64 = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8, TensorProto.INT8,
                              TensorProto.INT32, TensorProto.INT64)
SHARED_TABLE = Path(__file__).resolve().parents[3] / "shared" / "trt" / "onnx-tensorrt-operators-10.1.json"


def value(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def graph(nodes, inputs, outputs, inits=(), opset=20, extra_opsets=()) -> onnx.ModelProto:
    """A model of `nodes`; inputs/outputs are (name, elem_type, shape) tuples."""
    g = helper.make_graph(nodes, "g", [value(*i) for i in inputs], [value(*o) for o in outputs], list(inits))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(g, opset_imports=opsets)
    model.ir_version = 9
    return model


def rules_of(model, **kwargs) -> set[tuple[str, str]]:
    return {(v.node, v.rule) for v in trt_violations(model, **kwargs)}


def qdq_conv(bias_dtype=None, zero=0, name="conv") -> tuple[list, list]:
    """x -> Q -> DQ -> Conv(DQ(int8 w)[, DQ(bias)]) nodes and initializers (symmetric, zero point `zero`)."""
    rng = np.random.default_rng(0)
    inits = [init("xs", np.float32(0.05)), init("xz", np.int8(zero)), init("w", rng.integers(-127, 127, (4, 3, 3, 3),
             dtype=np.int8)), init("ws", np.full(4, 0.01, np.float32)), init("wz", np.zeros(4, np.int8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dq_w", axis=0)]
    conv_inputs = ["xd", "wd"]
    if bias_dtype == "int32":
        inits += [init("b", np.arange(4, dtype=np.int32)), init("bs", np.full(4, 5e-4, np.float32)),
                  init("bz", np.zeros(4, np.int32))]
        nodes.append(helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], name="dq_bias", axis=0))
        conv_inputs.append("bd")
    elif bias_dtype == "float":
        inits.append(init("b", np.arange(4, dtype=np.float32)))
        conv_inputs.append("b")
    nodes.append(helper.make_node("Conv", conv_inputs, ["y"], name=name, pads=[1, 1, 1, 1]))
    return nodes, inits


# --- the operator tables --------------------------------------------------------------------------------


def test_default_table_is_tensorrt_10_1_with_its_source():
    matrix = load_matrix()
    assert matrix.version == DEFAULT_TRT_VERSION == "10.1" and DEFAULT_TRT_VERSION in available_versions()
    assert "onnx-tensorrt docs/operators.md" in matrix.source and "10.1" in matrix.source
    assert matrix.opset_range == (9, 20)
    assert matrix.op("Conv").supported and "FP16" in matrix.op("Conv").types
    assert not matrix.op("QLinearConv").supported
    assert matrix.op("DequantizeLinear").types == {"INT8", "FP8", "INT4"}
    assert "UINT8" not in matrix.op("Transpose").types and "UINT8" in matrix.op("Cast").types
    assert any("UINT8" in rule for rule in matrix.rules)


@pytest.mark.skipif(not SHARED_TABLE.is_file(), reason="the transcription ../shared/trt is not beside this checkout")
def test_shipped_table_is_the_transcription_with_its_errata_only():
    shipped = json.loads((Path(trt_matrix.__file__).parent / "data" / "onnx-tensorrt-operators-10.1.json").read_text())
    source = json.loads(SHARED_TABLE.read_text())
    assert shipped["source"] == source["source"] and shipped["rules"][:len(source["rules"])] == source["rules"]
    added = shipped["rules"][len(source["rules"]):]  # from TensorRT's headers, each naming its source
    assert len(added) == 2 and all("added by pfdeploy" in r and ("NvInfer.h" in r or "NvInferRuntimeBase.h" in r)
                                   for r in added)
    changed = sorted(op for op in source["operators"] if source["operators"][op] != shipped["operators"][op])
    assert changed == ["ConstantOfShape", "Selu"] and len(shipped["errata"]) == 2  # the typos it names


def test_unknown_version_names_the_shipped_ones():
    with pytest.raises(PfdeployError, match=r"no TensorRT operator table for version '9\.9'.*shipped: .*10\.1"):
        load_matrix("9.9")


def _table(tmp_path, change=None, name="onnx-tensorrt-operators-99.0.json", text=None) -> Path:
    data = json.loads((Path(trt_matrix.__file__).parent / "data" / "onnx-tensorrt-operators-10.1.json").read_text())
    data.pop("tensorrt_version")
    if change:
        change(data)
    path = tmp_path / name
    path.write_text(text if text is not None else json.dumps(data))
    return path


@pytest.mark.parametrize("change, words", [
    (lambda d: d.pop("operators"), "missing key"),
    (lambda d: d.update(opset_range=[20]), "opset_range"),
    (lambda d: d["operators"]["Conv"].update(types=["FP32", "FP64"]), "'FP64' not in tensor_types|FP64"),
    (lambda d: d["operators"]["Conv"].update(supported="yes"), "'supported'"),
    (lambda d: d.update(tensorrt_version="10.1"), "file name says '99.0'"),
    (lambda d: d.update(operators=[]), "operators must be"),
])
def test_malformed_table_is_one_line_naming_the_problem(tmp_path, change, words):
    with pytest.raises(PfdeployError, match=words) as exc:
        load_matrix(_table(tmp_path, change))
    assert "malformed" in str(exc.value) and "\n" not in str(exc.value)


def test_table_that_is_not_json_is_refused(tmp_path):
    with pytest.raises(PfdeployError, match="malformed: not JSON"):
        load_matrix(_table(tmp_path, text="{not json"))
    with pytest.raises(PfdeployError, match="not found"):
        load_matrix(tmp_path / "onnx-tensorrt-operators-1.0.json")


def test_a_dropped_in_table_is_selectable_by_version(tmp_path, monkeypatch):
    """Adding a newer TensorRT is a file: a table that lists INT32 for MatMul lifts that violation."""
    shutil.copy(Path(trt_matrix.__file__).parent / "data" / "onnx-tensorrt-operators-10.1.json", tmp_path)
    _table(tmp_path, lambda d: d["operators"]["MatMul"]["types"].append("INT32"),
           name="onnx-tensorrt-operators-10.13.json")
    monkeypatch.setattr(trt_matrix, "_data_dir", lambda: tmp_path)
    assert available_versions() == ["10.1", "10.13"]  # numeric order, not string order
    mm = helper.make_node("MatMul", ["a", "a"], ["y"], name="mm")
    model = graph([mm], [("a", I32, [2, 2])], [("y", I32, [2, 2])])
    assert rules_of(model, matrix="10.1") == {("mm", "input-type")}
    assert rules_of(model, matrix="10.13") == set()
    assert load_matrix("10.13").version == "10.13"


def test_matrix_from_dict_accepts_the_limited_double_type():
    data = {"source": "s", "opset_range": [9, 20], "tensor_types": ["DOUBLE (limited)", "FP32"], "rules": [],
            "operators": {"Relu": {"supported": True, "types": ["FP32", "DOUBLE"], "restrictions": ""}}}
    assert matrix_from_dict(data, "1.0").op("Relu").types == {"FP32", "DOUBLE"}


# --- each rule ------------------------------------------------------------------------------------------


def test_a_clean_qdq_graph_with_float_bias_passes():
    nodes, inits = qdq_conv(bias_dtype="float")
    model = graph(nodes, [("x", F32, ["N", 3, 8, 8])], [("y", F32, ["N", 4, 8, 8])], inits)
    assert trt_violations(model) == []


def test_opset_outside_the_range():
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    assert rules_of(graph(relu, [("x", F32, [1])], [("y", F32, [1])], opset=21)) == {("", "opset")}
    assert rules_of(graph(relu, [("x", F32, [1])], [("y", F32, [1])], opset=20)) == set()


def test_non_default_domain():
    nodes = [helper.make_node("FusedGemm", ["x", "x"], ["y"], domain="com.microsoft", name="fused")]
    model = graph(nodes, [("x", F32, [2, 2])], [("y", F32, [2, 2])], extra_opsets=[("com.microsoft", 1)])
    assert rules_of(model) == {("fused", "domain")}


@pytest.mark.parametrize("op", ["Unique", "BitShift", "Col2Im"])
def test_op_listed_unsupported(op):
    node = helper.make_node(op, ["x", "x"][: 2 if op == "BitShift" else 1], ["y"], name="n",
                            **({"direction": "LEFT"} if op == "BitShift" else {}))
    assert ("n", "unsupported-op") in rules_of(graph([node], [("x", I64 if op != "Unique" else F32, [4])],
                                                     [("y", I64 if op != "Unique" else F32, [4])]))


def test_input_type_not_listed_for_the_op():
    matmul = [helper.make_node("MatMul", ["a", "a"], ["y"], name="mm")]  # MatMul: FP32/FP16/BF16 only
    assert rules_of(graph(matmul, [("a", I32, [2, 2])], [("y", I32, [2, 2])])) == {("mm", "input-type")}
    cast = [helper.make_node("Cast", ["a"], ["y"], to=TensorProto.DOUBLE, name="to_double")]
    assert rules_of(graph(cast, [("a", F32, [2])], [("y", TensorProto.DOUBLE, [2])])) == {("to_double", "input-type")}


def test_int32_bias_behind_dequantize_is_rejected_with_the_reason():
    nodes, inits = qdq_conv(bias_dtype="int32")
    violations = trt_violations(graph(nodes, [("x", F32, ["N", 3, 8, 8])], [("y", F32, ["N", 4, 8, 8])], inits))
    assert [(v.node, v.rule) for v in violations] == [("dq_bias", "dq-input")]
    assert "INT32" in violations[0].detail and "onnx-tensorrt#850" in violations[0].detail


def test_uint8_only_into_cast():
    perm = [0, 3, 1, 2]
    bad = graph([helper.make_node("Transpose", ["x"], ["t"], perm=perm, name="transpose_u8"),
                 helper.make_node("Cast", ["t"], ["y"], to=F32, name="cast")],
                [("x", U8, [1, 8, 8, 3])], [("y", F32, [1, 3, 8, 8])])
    assert rules_of(bad) == {("transpose_u8", "uint8-io")}  # one message for its UINT8 input and output
    good = graph([helper.make_node("Cast", ["x"], ["c"], to=F32, name="cast"),
                  helper.make_node("Transpose", ["c"], ["y"], perm=perm, name="transpose")],
                 [("x", U8, [1, 8, 8, 3])], [("y", F32, [1, 3, 8, 8])])
    assert rules_of(good) == set()
    shape = graph([helper.make_node("Shape", ["x"], ["y"], name="shape_of_raw")],
                  [("x", U8, [1, 8, 8, 3])], [("y", I64, [4])])
    assert ("shape_of_raw", "uint8-io") in rules_of(shape)
    inside = graph([helper.make_node("Cast", ["x"], ["u"], to=U8, name="to_u8"),
                    helper.make_node("Cast", ["u"], ["y"], to=F32, name="back")],
                   [("x", F32, [2])], [("y", F32, [2])])
    assert rules_of(inside) == {("to_u8", "uint8-io")}
    output = graph([helper.make_node("Cast", ["x"], ["y"], to=U8, name="to_u8")], [("x", F32, [2])], [("y", U8, [2])])
    assert rules_of(output) == set()  # a UINT8 network output made by Cast is allowed


def test_int8_only_between_quantize_and_dequantize():
    nodes, inits = qdq_conv()
    nodes[1].input[0] = "xq_t"  # DQ reads a transposed INT8 tensor
    nodes.insert(1, helper.make_node("Transpose", ["xq"], ["xq_t"], perm=[0, 1, 3, 2], name="transpose_i8"))
    model = graph(nodes, [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 4, 8, 8])], inits)
    assert rules_of(model) == {("transpose_i8", "quantized-type")}
    raw = graph([helper.make_node("DequantizeLinear", ["x", "s"], ["y"], name="dq_raw")],
                [("x", I8, [4])], [("y", F32, [4])], [init("s", np.float32(0.1))])
    assert rules_of(raw) == {("dq_raw", "quantized-type")}


def test_zero_points_must_be_constant_zeros():
    nodes, inits = qdq_conv(zero=3)
    model = graph(nodes, [("x", F32, [1, 3, 8, 8])], [("y", F32, [1, 4, 8, 8])], inits)
    assert rules_of(model) == {("q_x", "zero-point"), ("dq_x", "zero-point")}
    runtime_zp = graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")],
                       [("x", F32, [4]), ("z", I8, [])], [("y", F32, [4])], [init("s", np.float32(0.1))])
    assert {("q", "zero-point"), ("dq", "zero-point")} <= rules_of(runtime_zp)


def _pool(op="MaxPool", rank=4, outputs=("y",), **attrs):
    shape = [1, 2, 8, 8, 8][:rank]
    node = helper.make_node(op, ["x"], list(outputs), name="pool", kernel_shape=[3] * (rank - 2), **attrs)
    outs = [("y", F32, None)] + ([("idx", I64, None)] if len(outputs) > 1 else [])
    return graph([node], [("x", F32, shape)], outs)


def test_pooling_restrictions():
    assert rules_of(_pool(dilations=[2, 2])) == {("pool", "pool-dilations")}
    assert rules_of(_pool(dilations=[1, 1])) == set()
    assert rules_of(_pool("AveragePool", dilations=[1, 2])) == {("pool", "pool-dilations")}
    assert rules_of(_pool(rank=3)) == {("pool", "pool-rank")}
    assert rules_of(_pool(outputs=("y", "idx"))) == {("pool", "pool-indices")}


def test_restrictions_apply_only_where_the_table_states_them(tmp_path):
    lifted = load_matrix(_table(tmp_path, lambda d: d["operators"]["MaxPool"].update(restrictions="")))
    assert rules_of(_pool(dilations=[2, 2]), matrix=lifted) == set()


def test_layernorm_mean_output_and_runtime_axes():
    ln = helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="ln")
    model = graph([ln], [("x", F32, [2, 4])], [("y", F32, [2, 4]), ("mean", F32, None)],
                  [init("g", np.ones(4, np.float32))])
    assert rules_of(model) == {("ln", "layernorm-outputs")}
    reduce = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")
    assert rules_of(graph([reduce], [("x", F32, [2, 4]), ("axes", I64, [1])], [("y", F32, None)])) == {
        ("mean", "constant-input")}
    assert rules_of(graph([reduce], [("x", F32, [2, 4])], [("y", F32, None)], [init("axes", np.array([1]))])) == set()


def test_constant_dropout_and_topk_restrictions():
    const = helper.make_node("Constant", [], ["c"], name="text", value_string="hello")
    assert ("text", "constant-attribute") in rules_of(graph([const], [], [("c", TensorProto.STRING, [])]))
    drop = helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="drop")
    model = graph([drop], [("x", F32, [4])], [("y", F32, [4])], [init("r", np.float32(0.5)), init("t", np.bool_(True))])
    assert rules_of(model) == {("drop", "dropout-training")}
    topk = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", sorted=0)
    model = graph([topk], [("x", F32, [1, 5000])], [("v", F32, None), ("i", I64, None)], [init("k", np.array([4000]))])
    violations = [v for v in trt_violations(model) if v.rule == "topk"]
    assert len(violations) == 2 and "sorted=0" in violations[0].detail and "K=4000" in violations[1].detail


def test_every_rule_is_documented():
    assert set(RULES) >= {"opset", "domain", "unsupported-op", "input-type", "dq-input", "uint8-io",
                          "quantized-type", "zero-point", "pool-dilations"}


# --- the graph of the issue, through the library and the CLI -----------------------------------------------


def issue_graph(path: Path) -> Path:
    """UINT8 NHWC input -> Transpose (on UINT8) -> Cast -> Q/DQ Conv with an INT32 bias behind a DQ ->
    com.microsoft Gelu -> GlobalAveragePool -> Flatten: three things ONNX Runtime runs and TensorRT rejects."""
    nodes, inits = qdq_conv(bias_dtype="int32")
    nodes = [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2], name="transpose_u8"),
             helper.make_node("Cast", ["nchw"], ["x"], to=F32, name="cast"), *nodes,
             helper.make_node("Gelu", ["y"], ["g"], domain="com.microsoft", name="ms_gelu"),
             helper.make_node("GlobalAveragePool", ["g"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["logits"], name="flatten")]
    model = graph(nodes, [("input", U8, ["batch", 8, 8, 3])], [("logits", F32, ["batch", 4])], inits,
                  extra_opsets=[("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


ISSUE_VIOLATIONS = {("transpose_u8", "uint8-io"), ("dq_bias", "dq-input"), ("ms_gelu", "domain")}


def test_issue_graph_runs_in_onnxruntime_and_every_problem_is_named(tmp_path):
    import onnxruntime as ort

    path = issue_graph(tmp_path / "bad.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((2, 8, 8, 3), np.uint8)})[0].shape == (2, 4)
    assert rules_of(path) == ISSUE_VIOLATIONS
    report = check_trt(path)
    assert not report.passed and report.trt_version == "10.1"
    text = report.format()
    assert text.startswith(f"{path}: FAIL") and all(node in text for node, _ in ISSUE_VIOLATIONS)


def test_check_trt_command_lists_violations_and_exits_1(tmp_path, capsys):
    bad = issue_graph(tmp_path / "bad.onnx")
    nodes, inits = qdq_conv(bias_dtype="float")
    good = tmp_path / "good.onnx"
    onnx.save(graph(nodes, [("x", F32, ["N", 3, 8, 8])], [("y", F32, ["N", 4, 8, 8])], inits), str(good))
    assert main(["check-trt", str(good)]) == 0
    assert f"{good}: PASS" in capsys.readouterr().out
    assert main(["check-trt", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "transpose_u8" in out and "dq_bias" in out and "ms_gelu" in out and "onnx-tensorrt" in out
    assert main(["check-trt", "--json", str(bad)]) == 1
    reported = json.loads(capsys.readouterr().out)
    assert {(v["node"], v["rule"]) for v in reported[0]["violations"]} == ISSUE_VIOLATIONS
    assert main(["check-trt", "--trt-version", "7.0", str(good)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no TensorRT operator table for version '7.0'" in err[0]


def test_info_onnx_has_a_tensorrt_section(tmp_path, capsys):
    assert main(["info", "--onnx", str(issue_graph(tmp_path / "bad.onnx"))]) == 0
    section = json.loads(capsys.readouterr().out)["tensorrt_check"]
    assert section["passed"] is False and section["trt_version"] == "10.1"
    assert {(v["node"], v["rule"]) for v in section["violations"]} == ISSUE_VIOLATIONS


class _LoudTensorRT:
    """A meta-path finder that fails any `import tensorrt`, and counts the attempts."""

    attempts = 0

    def find_spec(self, name, path=None, target=None):
        if name == "tensorrt" or name.startswith("tensorrt."):
            type(self).attempts += 1
            raise ImportError("tensorrt was imported (the compatibility check should have refused first)")
        return None


@pytest.fixture
def loud_tensorrt(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_LoudTensorRT(), *sys.meta_path])
    _LoudTensorRT.attempts = 0
    return _LoudTensorRT


def test_build_engine_refuses_before_importing_tensorrt(tmp_path, capsys, loud_tensorrt):
    bad = issue_graph(tmp_path / "bad.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["build-engine", str(bad), "--timing-cache", str(tmp_path / "t.cache"), "--inspect"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pfdeploy: error: ")
    assert "outside TensorRT 10.1's ONNX support" in err[0] and "transpose_u8" in err[0] and "uint8-io" in err[0]
    assert "check-trt" in err[0]
    assert loud_tensorrt.attempts == 0 and sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_compatible_graph_goes_on_to_import_tensorrt(make_onnx, capsys, loud_tensorrt):
    """The control: past the check, build-engine does import TensorRT (here: our loud stand-in)."""
    assert main(["build-engine", str(make_onnx(precision="int8"))]) == 2
    assert loud_tensorrt.attempts >= 1
    assert "TensorRT" in capsys.readouterr().err


def test_require_trt_compatible_is_one_line():
    path = Path(__file__).parent / "no-such.onnx"
    with pytest.raises(PfdeployError, match="not found"):
        require_trt_compatible(path)


# --- graphs ONNX itself rejects, and an empty op_type (issue 19, item 8) -------------------------------------


def _cyclic() -> onnx.ModelProto:
    """Add and Relu feeding each other: `a = x + r`, `r = relu(a)` (onnx.checker: not topologically sorted)."""
    nodes = [helper.make_node("Add", ["x", "r"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu")]
    return graph(nodes, [("x", F32, [2])], [("r", F32, [2])])


def _self_loop() -> onnx.ModelProto:
    return graph([helper.make_node("Add", ["x", "y"], ["y"], name="loop")], [("x", F32, [2])], [("y", F32, [2])])


def _cycle_in_a_branch() -> onnx.ModelProto:
    """The cycle inside an If's then-branch (reading `x` from the enclosing graph is fine)."""
    then = helper.make_graph([helper.make_node("Add", ["x", "r"], ["a"], name="add"),
                              helper.make_node("Relu", ["a"], ["r"], name="relu")], "then", [], [value("r", F32, [2])])
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["s"], name="relu2")], "else", [],
                              [value("s", F32, [2])])
    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=other)
    return graph([node], [("x", F32, [2]), ("c", onnx.TensorProto.BOOL, [])], [("y", F32, [2])])


@pytest.mark.parametrize("make, node", [(_cyclic, "add"), (_self_loop, "loop"),
                                        (_cycle_in_a_branch, "if/then_branch/add")])
def test_cycles_and_self_loops_fail_like_onnx_checker(tmp_path, capsys, make, node):
    model = make()
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    assert rules_of(model) == {(node, "graph-order")}
    path = tmp_path / "cyclic.onnx"
    onnx.save(model, str(path))
    assert main(["check-trt", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and f"node {node!r}" in out and "graph-order" in out
    assert main(["info", "--onnx", str(path)]) == 0
    section = json.loads(capsys.readouterr().out)["tensorrt_check"]
    assert section["passed"] is False and [v["rule"] for v in section["violations"]] == ["graph-order"]


def test_a_dangling_input_is_named():
    model = graph([helper.make_node("Relu", ["nowhere"], ["y"], name="r")], [("x", F32, [2])], [("y", F32, [2])])
    [violation] = trt_violations(model)
    assert violation.rule == "graph-order" and "'nowhere'" in violation.detail


def test_an_empty_op_type_gets_a_message_that_says_so():
    model = graph([helper.make_node("", ["x"], ["y"], name="blank")], [("x", F32, [2])], [("y", F32, [2])])
    [violation] = trt_violations(model)
    assert violation.rule == "unsupported-op" and "no op_type" in str(violation)
    assert str(violation).startswith("node 'blank'") and " is not in" not in str(violation)


# --- rules from TensorRT's headers (issue 19, item 15) -----------------------------------------------------


@pytest.mark.parametrize("to, ok", [(F32, True), (F16, True), (I32, False), (I64, False), (TensorProto.BOOL, False),
                                    (TensorProto.BFLOAT16, False)])
def test_a_cast_from_uint8_converts_only_to_float_or_half(to, ok):
    cast = helper.make_node("Cast", ["x"], ["y"], to=to, name="cast")
    model = graph([cast], [("x", U8, [1, 4])], [("y", to, [1, 4])])
    assert rules_of(model) == (set() if ok else {("cast", "uint8-cast")})
    if not ok:
        [violation] = [v for v in trt_violations(model) if v.rule == "uint8-cast"]
        assert "NvInferRuntimeBase.h" in violation.detail


def test_a_cast_to_a_uint8_output_only_from_float_or_half():
    model = graph([helper.make_node("Cast", ["x"], ["y"], to=U8, name="to_u8")], [("x", I32, [4])], [("y", U8, [4])])
    assert rules_of(model) == {("to_u8", "uint8-cast")}


def _per_channel_dq(rooted_at_constant: bool) -> onnx.ModelProto:
    """A DQ with a 1-D scale (per-channel) over a weight (Q of an initializer) or over an activation."""
    inits = [init("s", np.full(4, 0.1, np.float32)), init("z", np.zeros(4, np.int8)),
             init("w", np.ones((4, 3), np.float32))]
    source = "w" if rooted_at_constant else "x"
    nodes = [helper.make_node("QuantizeLinear", [source, "s", "z"], ["q"], axis=0, name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0, name="dq")]
    return graph(nodes, [("x", F32, [4, 3])], [("y", F32, [4, 3])], inits)


def test_per_channel_qdq_only_on_weights():
    assert rules_of(_per_channel_dq(rooted_at_constant=True)) == set()
    violations = [v for v in trt_violations(_per_channel_dq(rooted_at_constant=False))]
    assert {(v.node, v.rule) for v in violations} == {("q", "per-channel-qdq"), ("dq", "per-channel-qdq")}
    assert all("NvInfer.h" in v.detail for v in violations)


def test_the_header_rules_are_in_the_table_with_their_source():
    rules = load_matrix().rules
    assert any("kUINT8" in r and "NvInferRuntimeBase.h" in r for r in rules)
    assert any("Per-channel" in r and "NvInfer.h" in r for r in rules)
    assert {"uint8-cast", "per-channel-qdq", "graph-order"} <= set(RULES)


def test_a_table_without_the_header_rules_does_not_apply_them(tmp_path):
    plain = load_matrix(_table(tmp_path, lambda d: d.update(rules=d["rules"][:4])))
    cast = graph([helper.make_node("Cast", ["x"], ["y"], to=I32, name="cast")], [("x", U8, [4])], [("y", I32, [4])])
    assert rules_of(cast, matrix=plain) == set() and rules_of(_per_channel_dq(False), matrix=plain) == set()
