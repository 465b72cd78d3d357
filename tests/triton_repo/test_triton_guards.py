"""A hostile or unlucky `pfdeploy triton` (issue 19, items 2, 3, 9, 10): model names that would leave the
repository, config.pbtxt injection through names and metadata, values Triton's schema cannot hold, and
repositories holding what pfdeploy did not write. Every config is parsed with Triton's own ModelConfig
protobuf (tritonclient's model_config_pb2); what cannot be written is refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from pfdeploy.cli import main
from pfdeploy.errors import PfdeployError
from pfdeploy.triton import TritonOptions, config_from_spec, pbtxt_from_config, repository_from_artifacts
from pfdeploy.triton.spec import spec_from_manifest, spec_from_onnx
from pfdeploy.triton.validate import parse_model_config

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] ships Triton's schema")


def identity_graph(path: Path, in_name="input", out_name="logits", meta=None) -> Path:
    """input (batch, 3) -> Identity -> logits: the smallest graph Triton can batch, tensor names as given."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [in_name], [out_name])], "g",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (meta or {"pfdeploy.model": "toy"}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pfdeploy: error: "), err
    return err[0]


# --- item 2: model names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside", "/abs/dir", "a/b", ".", "..", "", "a\\b", "-rf", ".hidden",
                                  "x" * 129, "new\nline", "tab\tname"])
def test_model_names_that_are_not_plain_names_are_refused(tmp_path, capsys, name):
    source = identity_graph(tmp_path / "m.onnx")
    repo = tmp_path / "deep" / "repo"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(PfdeployError, match="Triton model name"):
        repository_from_artifacts([source], repo, names=[name])
    assert main(["triton", str(source), "--repo", str(repo), f"--name={name}"]) == 1
    assert "Triton model name" in one_line_error(capsys)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_names_derived_from_file_names_are_plain_names(tmp_path):
    odd = identity_graph(tmp_path / "-rf ..x.onnx")
    [model] = repository_from_artifacts([odd], tmp_path / "repo")
    assert model.name == "rf_x" and model.config_path.parent == tmp_path / "repo" / "rf_x"
    long = identity_graph(tmp_path / f"{'y' * 200}.onnx")
    with pytest.raises(PfdeployError, match="Triton model name.*--name"):
        repository_from_artifacts([long], tmp_path / "repo2")
    assert not (tmp_path / "repo2").exists()


# --- item 3: config.pbtxt injection -------------------------------------------------------------------

HOSTILE = ['in"\n}\ninput {\n  name: "x2', 'back\\slash"quote\'', "TYPE_FP32", "KIND_GPU", "tab\tcr\rnul\x00bell\x07",
           "del\x7f-é-\u2028-\U0001f600", "a\\nb"]


@pytest.mark.parametrize("tensor", HOSTILE)
def test_hostile_tensor_names_round_trip_through_triton_s_parser(tmp_path, tensor):
    source = identity_graph(tmp_path / "m.onnx", in_name=tensor, out_name=tensor + "_out")
    [model] = repository_from_artifacts([source], tmp_path / "repo")
    parsed = parse_model_config(model.config_path.read_text(encoding="utf-8"))
    assert [i.name for i in parsed.input] == [tensor]  # exactly the graph's name: one input, no injected one
    assert [o.name for o in parsed.output] == [tensor + "_out"]
    assert parsed.name == "m" and parsed.platform == "onnxruntime_onnx" and parsed.backend == ""


def test_hostile_metadata_stays_inside_its_comment(tmp_path):
    evil = 'r50\nbackend: "python"\nname: "evil'
    meta = {"pfdeploy.model": evil, "pfdeploy.precision": "fp32\r\nmax_batch_size: 7",
            "pfdeploy.input_format": "\x00\x1b[31m", "pfdeploy.checkpoint_sha256": "\\\n"}
    source = identity_graph(tmp_path / "m.onnx", meta=meta)
    [model] = repository_from_artifacts([source], tmp_path / "repo", TritonOptions(max_batch=4))
    text = model.config_path.read_text(encoding="utf-8")
    parsed = parse_model_config(text)
    assert (parsed.name, parsed.backend, parsed.max_batch_size) == ("m", "", 4)
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert len(comments) == 2 and 'model=r50\\nbackend: \\"python\\"\\nname: \\"evil' in comments[1]
    assert not any(line.lstrip().startswith(("backend", 'name: "evil')) for line in text.splitlines())
    assert all(ch == "\n" or " " <= ch <= "~" for ch in text)  # printable ASCII only: nothing to misread


def test_non_utf8_file_names_are_escaped_in_the_provenance_comment(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.onnx"  # Latin-1 bytes: not UTF-8
    try:
        source = identity_graph(Path(os.fsdecode(raw)))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system does not take non-UTF-8 file names")
    [model] = repository_from_artifacts([source], tmp_path / "repo")
    text = model.config_path.read_bytes().decode("ascii")  # the file is ASCII, whatever the name was
    assert parse_model_config(text).name == model.name == "caf"
    assert "written by pfdeploy from caf\\351-\\377.onnx" in text


def _manifest(inputs=None, outputs=None, batch=None, metadata=None) -> dict:
    return {
        "io": {"inputs": inputs or [{"name": "input", "dtype": "float32", "shape": [-1, 3, 8, 8]}],
               "outputs": outputs or [{"name": "logits", "dtype": "float32", "shape": [-1, 5]}]},
        "batch": {"min": 1, "opt": 4, "max": 8} if batch is None else batch,
        "onnx": {"metadata": metadata or {"pfdeploy.model": "toy"}},
    }


def test_engine_manifest_names_and_metadata_cannot_inject(tmp_path):
    from pfdeploy.triton.repository import _provenance

    name = 'x"\n}\noutput {\n  name: "y'
    spec = spec_from_manifest(_manifest(inputs=[{"name": name, "dtype": "float32", "shape": [-1, 3]}],
                                        metadata={"pfdeploy.model": 'a\nplatform: "pytorch_libtorch'}),
                              tmp_path / "m.plan")
    text = pbtxt_from_config(config_from_spec(spec, "m"), _provenance(spec))
    parsed = parse_model_config(text)
    assert [i.name for i in parsed.input] == [name] and [o.name for o in parsed.output] == ["logits"]
    assert parsed.platform == "tensorrt_plan"


def test_names_that_are_not_unicode_text_are_refused(tmp_path):
    spec = spec_from_manifest(_manifest(inputs=[{"name": "in\udcff", "dtype": "float32", "shape": [-1, 3]}]),
                              tmp_path / "m.plan")
    with pytest.raises(PfdeployError, match="not valid UTF-8"):
        pbtxt_from_config(config_from_spec(spec, "m"))


# --- item 9: what Triton's schema cannot hold -----------------------------------------------------------


@pytest.mark.parametrize("option, words", [
    (TritonOptions(max_batch=1_000_000_000_000), "--max-batch"),
    (TritonOptions(max_batch=5000), "--max-batch"),  # a dynamic ONNX batch is 1..4096
    (TritonOptions(dynamic_batching=True, queue_delay_us=-5), "--queue-delay-us"),
    (TritonOptions(dynamic_batching=True, queue_delay_us=2**64), "--queue-delay-us"),
    (TritonOptions(instances=2**31), "--instances"),
])
def test_options_outside_the_schema_are_refused(tmp_path, option, words):
    spec = spec_from_onnx(identity_graph(tmp_path / "m.onnx"))
    with pytest.raises(PfdeployError, match=words) as exc:
        config_from_spec(spec, "m", option)
    assert "\n" not in str(exc.value)


def test_cli_options_outside_the_schema_are_one_line(tmp_path, capsys):
    source = identity_graph(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    for extra in (["--max-batch", "1000000000000"], ["--dynamic-batching", "--queue-delay-us", "-5"]):
        assert main(["triton", str(source), "--repo", str(repo), *extra]) == 1
        one_line_error(capsys)
    assert not repo.exists()


@pytest.mark.parametrize("change, words", [
    (dict(batch={"min": -5, "opt": -1, "max": -1}), "batch"),
    (dict(batch={"min": 8, "opt": 4, "max": 2}), "batch"),
    (dict(batch={"min": 1, "opt": 3.7, "max": 8}), "batch"),
    (dict(batch={"min": True, "opt": 4, "max": 8}), "batch"),
    (dict(batch={"min": 1, "opt": 4, "max": 2**31}), "batch"),
    (dict(inputs=[{"name": "input", "dtype": "float32", "shape": "1234"}]), "shape"),
    (dict(inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 3.7]}]), "shape"),
    (dict(inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 0]}]), "shape"),
    (dict(inputs=[{"name": "input", "dtype": "float32", "shape": [-1, -7]}]), "shape"),
    (dict(inputs=[{"name": 7, "dtype": "float32", "shape": [-1, 3]}]), "name"),
])
def test_manifest_values_outside_the_schema_are_refused(tmp_path, change, words):
    with pytest.raises(PfdeployError, match=words) as exc:
        spec_from_manifest(_manifest(**change), tmp_path / "m.plan")
    assert "m.plan.json" in str(exc.value) and "\n" not in str(exc.value)


def test_every_accepted_value_parses(tmp_path):
    spec = spec_from_manifest(_manifest(batch={"min": 1, "opt": 1, "max": 1}), tmp_path / "m.plan")
    options = TritonOptions(dynamic_batching=True, queue_delay_us=0, instances=2**31 - 1)
    parsed = parse_model_config(pbtxt_from_config(config_from_spec(spec, "m", options)))
    assert parsed.max_batch_size == 1 and parsed.dynamic_batching.max_queue_delay_microseconds == 0
    assert parsed.instance_group[0].count == 2**31 - 1


# --- item 10: what pfdeploy did not write ------------------------------------------------------------------


def test_a_model_folder_holding_foreign_versions_is_refused(tmp_path, capsys):
    source = identity_graph(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    repository_from_artifacts([source], repo)
    repository_from_artifacts([source], repo)  # pfdeploy's own folder: rewritten
    (repo / "m" / "2").mkdir()
    (repo / "m" / "2" / "model.onnx").write_bytes(b"the user's own version 2")
    before = (repo / "m" / "config.pbtxt").read_bytes()
    with pytest.raises(PfdeployError, match=r"version folder\(s\) 2 .*pfdeploy did not write"):
        repository_from_artifacts([source], repo)
    assert (repo / "m" / "config.pbtxt").read_bytes() == before


def test_a_model_folder_with_a_foreign_config_is_refused(tmp_path):
    source = identity_graph(tmp_path / "m.onnx")
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')
    with pytest.raises(PfdeployError, match="config.pbtxt that pfdeploy did not write"):
        repository_from_artifacts([source], tmp_path / "repo")
    assert "python" in (tmp_path / "repo" / "m" / "config.pbtxt").read_text()


@pytest.mark.parametrize("where", ["same", "ancestor"])
def test_repo_holding_the_artifact_is_refused(tmp_path, capsys, where):
    folder = tmp_path / "models" / "onnx"
    folder.mkdir(parents=True)
    source = identity_graph(folder / "m.onnx")
    repo = folder if where == "same" else tmp_path / "models"
    assert main(["triton", str(source), "--repo", str(repo)]) == 1
    assert "holds the artifact" in one_line_error(capsys)
    assert sorted(p.name for p in repo.rglob("*")) == sorted(["m.onnx"] + (["onnx"] if where == "ancestor" else []))


def test_external_data_in_a_subfolder_is_served_where_the_model_names_it(tmp_path):
    """A location `sub/w.data` (inside the model's folder, allowed) was copied flat to `1/w.data`, where the
    served model could not find it; two locations with one base name overwrote each other."""
    import numpy as np
    import onnxruntime as ort
    from onnx import numpy_helper

    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "b").mkdir()
    weights = [np.arange(9, dtype=np.float32).reshape(3, 3), np.eye(3, dtype=np.float32) * 2]
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w0"], ["h"]), helper.make_node("MatMul", ["h", "w1"], ["logits"])],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="pfdeploy.model", value="toy")
    for index, tensor in enumerate(model.graph.initializer):  # a/w.data and b/w.data: one base name
        onnx.external_data_helper.set_external_data(tensor, location=f"{'ab'[index]}/w.data")
    onnx.save(model, str(source / "m.onnx"))
    for tensor, folder in zip(model.graph.initializer, "ab", strict=True):
        (source / folder / "w.data").write_bytes(numpy_helper.to_array(
            numpy_helper.from_array(weights["ab".index(folder)], tensor.name)).tobytes())
    repo = tmp_path / "repo"
    [served] = repository_from_artifacts([source / "m.onnx"], repo)
    x = np.array([[1, 2, 3]], np.float32)
    expected = x @ weights[0] @ weights[1]
    session = ort.InferenceSession(str(served.model_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_engine_is_named_as_such_not_missing(tmp_path, capsys):
    plan = tmp_path / "m.plan"
    os.mkfifo(plan)
    assert main(["triton", str(plan), "--repo", str(tmp_path / "repo")]) == 1
    assert "engine " + str(plan) + " is a FIFO, not a regular file" in one_line_error(capsys)
    assert not (tmp_path / "repo").exists()
