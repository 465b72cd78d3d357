"""Profile shapes from ONNX inputs and batch ranges, and what the builder reads from an ONNX file."""

from __future__ import annotations

import pytest

from pfdeploy._onnxgraph import GraphTensor
from pfdeploy.engines.onnx_facts import onnx_facts
from pfdeploy.engines.profile import DEFAULT_BATCH, check_batch_range, parse_batch_range, profile_shapes
from pfdeploy.errors import PfdeployError


@pytest.mark.parametrize(
    "text, expected", [("1,8,32", (1, 8, 32)), (" 2, 4 ,4 ", (2, 4, 4)), ("16", (16, 16, 16))]
)
def test_parse_batch_range(text, expected):
    assert parse_batch_range(text) == expected


@pytest.mark.parametrize("text", ["0,1,2", "8,4,32", "1,64,32", "a,b,c", "1,2", "1,2,3,4", "", "-1,1,1"])
def test_parse_batch_range_rejects(text):
    with pytest.raises(PfdeployError, match="batch"):
        parse_batch_range(text)


def test_check_batch_range_rejects_non_integers():
    with pytest.raises(PfdeployError, match="three integers"):
        check_batch_range((1, "x", 3))


def test_dynamic_batch_takes_range_and_keeps_image_dims():
    specs = [GraphTensor("input", ("N", 3, 224, 224), "float32")]
    assert profile_shapes(specs, (1, 8, 32)) == {
        "input": {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}
    }


@pytest.mark.parametrize("dim0", [None, "batch", -1, 0])
def test_every_spelling_of_a_dynamic_batch_gets_the_default(dim0):
    shapes = profile_shapes([GraphTensor("x", (dim0, 3, 8, 8), "float32")])
    assert [shapes["x"][k][0] for k in ("min", "opt", "max")] == list(DEFAULT_BATCH)


def test_fixed_batch_is_kept_and_must_agree():
    specs = [GraphTensor("input", (4, 3, 8, 8), "float32")]
    assert profile_shapes(specs)["input"]["max"] == [4, 3, 8, 8]
    assert profile_shapes(specs, (4, 4, 4))["input"]["min"] == [4, 3, 8, 8]
    with pytest.raises(PfdeployError, match="fixed batch of 4"):
        profile_shapes(specs, (1, 8, 32))


def test_dynamic_spatial_dim_is_refused_with_the_fix():
    with pytest.raises(PfdeployError, match="dynamic dimension 2.*--img-size"):
        profile_shapes([GraphTensor("input", ("N", 3, "H", 8), "float32")], (1, 2, 4))


def test_scalar_input_is_refused():
    with pytest.raises(PfdeployError, match="scalar"):
        profile_shapes([GraphTensor("s", (), "float32")])


def test_bad_range_is_reported_even_for_a_valid_graph():
    with pytest.raises(PfdeployError, match="min <= opt <= max"):
        profile_shapes([GraphTensor("input", ("N", 3, 8, 8), "float32")], (8, 1, 32))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnx_facts_reads_inputs_metadata_and_precision(make_onnx, precision):
    facts = onnx_facts(make_onnx(precision=precision))
    assert facts.inputs == (GraphTensor("input", ("N", 3, 8, 8), "float32"),)
    assert facts.metadata["pfdeploy.model"] == "tiny" and len(facts.sha256) == 64
    assert (facts.precision, facts.precision_source) == (precision, "metadata")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_precision_is_read_from_the_graph_without_metadata(make_onnx, precision):
    facts = onnx_facts(make_onnx(precision=precision, metadata=False))
    assert (facts.precision, facts.precision_source) == (precision, "graph")
    assert facts.metadata == {}


def test_onnx_facts_errors(tmp_path):
    with pytest.raises(PfdeployError, match="not found"):
        onnx_facts(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx model\xff" * 10)
    with pytest.raises(PfdeployError, match="not an ONNX model, or is truncated"):
        onnx_facts(junk)


def test_a_batch_range_past_the_largest_batch_is_refused():
    """`build-engine --batch 1,8,8192` was built, then its own manifest was refused as damaged (max > 4096)."""
    assert check_batch_range((1, 8, 4096)) == (1, 8, 4096)
    with pytest.raises(PfdeployError, match="the largest batch pfdeploy runs is 4096"):
        check_batch_range((1, 8, 8192))
