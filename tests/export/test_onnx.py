"""onnx_from_model: fp32 graphs equal PyTorch at batch 1, 3, 17 (dynamic) and at a fixed batch."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from export_helpers import (
    CHEAP_GRAPHS,
    FULL_SIZE,
    REPRESENTATIVES,
    assert_close,
    cheap,
    perturbed_checkpoint,
    tiny,
    torch_logits,
)

from pfdeploy._io import sha256_file
from pfdeploy.calibration.preprocess import normalize_uint8, preprocess_for
from pfdeploy.engines.trt_check import trt_violations
from pfdeploy.errors import PfdeployError
from pfdeploy.export import describe_onnx, model_from_metadata, onnx_from_model, read_metadata
from pfdeploy.models import create_model, get_config, list_models
from pfdeploy.runtime.ort_options import ort_session_from_onnx

KEYS = ("model", "num_classes", "overrides", "checkpoint_sha256", "preprocess", "input_format",
        "precision", "opset", "version", "pf_layers")


def _inputs(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("name", CHEAP_GRAPHS)
def test_cheap_fp32_dynamic_batch_equals_pytorch(name, cheap_exports):
    path, ckpt = cheap_exports(name)
    meta = read_metadata(path)
    model = model_from_metadata(meta, ckpt)
    session = ort_session_from_onnx(path)
    for batch in (1, 3, 17):
        x = _inputs(batch, 64, seed=batch)
        got = session.run(None, {"input": x})[0]
        assert got.shape == (batch, 1000)
        assert_close(torch_logits(model, x), got)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


@pytest.mark.parametrize("name", CHEAP_GRAPHS)
def test_metadata_present(name, cheap_exports):
    path, ckpt = cheap_exports(name)
    meta = read_metadata(path)
    assert all(f"pfdeploy.{k}" in meta for k in KEYS)
    assert meta["pfdeploy.model"] == name
    assert meta["pfdeploy.checkpoint_sha256"] == sha256_file(ckpt)
    assert json.loads(meta["pfdeploy.overrides"]) == json.loads(json.dumps(cheap(name)))
    assert meta["pfdeploy.precision"] == "fp32" and meta["pfdeploy.input_format"] == "float-nchw"
    assert meta["pfdeploy.opset"] == "20" and _opset(path) == 20  # the default: GELU as one Gelu op
    assert int(meta["pfdeploy.pf_layers"]) == expected_pf_layers(name, cheap(name))
    assert json.loads(meta["pfdeploy.preprocess"])["size"] == 64


def _opset(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def expected_pf_layers(name: str, overrides: dict) -> int:
    """The paper's count of parameter-free layers for `name` built with `overrides`: one pooling
    layer per bottleneck of R50-max/hybrid, a max-pool mixer in every odd block of each ViT/PiT stage."""
    cfg = get_config(name)
    kwargs = {**cfg.kwargs, **overrides}
    if cfg.family == "resnet":
        return 0 if kwargs["kind"] == "conv" else sum(kwargs.get("layers", (3, 4, 6, 3)))
    if cfg.family == "vit":
        return kwargs["depth"] // 2 if kwargs["pooling"] else 0
    return sum(d // 2 for d in kwargs["depth"])


def test_pf_layer_rule_is_the_registry_count():
    assert {n: expected_pf_layers(n, {}) for n in list_models()} == {n: get_config(n).pf_layers for n in list_models()}


def test_opset_option_is_honoured(tmp_path):
    """--opset 18 (below Gelu's opset 20) writes an opset-18 graph with GELU as its erf form."""
    path = onnx_from_model("vit_ti_max", tmp_path / "o18.onnx", opset=18, overrides=tiny("vit_ti_max"))
    ops = describe_onnx(path)["node_counts"]
    assert _opset(path) == 18 and read_metadata(path)["pfdeploy.opset"] == "18"
    assert "Gelu" not in ops and ops["Erf"] >= 1


@pytest.mark.parametrize("name", CHEAP_GRAPHS)
def test_graph_is_clean(name, cheap_exports):
    info = describe_onnx(cheap_exports(name)[0])
    ops = info["node_counts"]
    assert info["inputs"][0]["name"] == "input" and info["outputs"][0]["name"] == "logits"
    assert info["inputs"][0]["shape"][0] == "batch" and info["outputs"][0]["shape"][0] == "batch"
    assert "Constant" not in ops and "Identity" not in ops  # folded
    assert "BatchNormalization" not in ops  # folded into the convolutions
    if "vit" in name or "pit" in name:
        assert ops["LayerNormalization"] >= 3  # one op, not a decomposition
        assert "ReduceMean" not in ops or ops["ReduceMean"] == 1  # only the token mean
    if name.endswith("_max") and "r50" not in name:
        # max-pool mixers: static grid, no Shape arithmetic anywhere near them
        assert ops["MaxPool"] >= 2
        assert info["shape_ops"] == 0, info["node_counts"]
    assert [str(v) for v in trt_violations(cheap_exports(name)[0])] == []  # TensorRT's documented support


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_fixed_batch_equals_pytorch(name, tmp_path):
    ckpt = perturbed_checkpoint(name, tmp_path / "w.pth", cheap(name))
    path = onnx_from_model(name, tmp_path / "m.onnx", checkpoint=ckpt, batch=5, overrides=cheap(name))
    info = describe_onnx(path)
    assert info["inputs"][0]["shape"] == [5, 3, 64, 64] and info["outputs"][0]["shape"] == [5, 1000]
    x = _inputs(5, 64)
    got = ort_session_from_onnx(path).run(None, {"input": x})[0]
    assert_close(torch_logits(model_from_metadata(read_metadata(path), ckpt), x), got)


@pytest.mark.parametrize("name", CHEAP_GRAPHS)
def test_uint8_nhwc_equals_outside_preprocessing(name, tmp_path):
    ckpt = perturbed_checkpoint(name, tmp_path / "w.pth", cheap(name))
    path = onnx_from_model(name, tmp_path / "m.onnx", checkpoint=ckpt, input_format="uint8-nhwc",
                           overrides=cheap(name))
    info = describe_onnx(path)
    assert info["inputs"][0]["dtype"] == "uint8" and info["inputs"][0]["shape"] == ["batch", 64, 64, 3]
    assert read_metadata(path)["pfdeploy.input_format"] == "uint8-nhwc"
    # TensorRT takes UINT8 only into a Cast: the raw bytes feed one Cast (no Transpose, no Shape on them)
    assert [n.op_type for n in onnx.load(str(path)).graph.node if "input" in n.input] == ["Cast"]
    assert [str(v) for v in trt_violations(path)] == []
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    got = ort_session_from_onnx(path).run(None, {"input": images})[0]
    model = model_from_metadata(read_metadata(path), ckpt)
    assert_close(torch_logits(model, normalize_uint8(images, preprocess_for(name, 64))), got)


def test_random_weights_are_stated_and_reproducible(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        path = onnx_from_model("vit_ti_max", tmp_path / "r.onnx", overrides=cheap("vit_ti_max"))
    assert "RANDOM weights" in caplog.text
    meta = read_metadata(path)
    assert meta["pfdeploy.checkpoint_sha256"] == "random"
    x = _inputs(2, 64)
    got = ort_session_from_onnx(path).run(None, {"input": x})[0]
    assert_close(torch_logits(model_from_metadata(meta), x), got)


def test_export_shows_the_models_warnings_and_hides_the_exporters(tmp_path):
    """Only the exporter's own known warnings are silenced: one raised by the model's forward while
    it is exported reaches the user."""
    model = create_model("r50", num_classes=10, **tiny("r50"))

    def warn_while_exported(module, args):
        if torch.compiler.is_exporting():
            warnings.warn("pfdeploy test: forward saw an odd input", UserWarning, stacklevel=1)

    model.register_forward_pre_hook(warn_while_exported)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnx_from_model(model, tmp_path / "m.onnx")
    assert [str(w.message) for w in caught] == ["pfdeploy test: forward saw an odd input"]


def test_bad_requests_fail_with_one_line(tmp_path):
    out = tmp_path / "x.onnx"
    for kwargs, words in (({"opset": 13}, "opset"), ({"precision": "int4"}, "precision"),
                          ({"input_format": "bgr"}, "input format"), ({"batch": 0}, "batch")):
        with pytest.raises(PfdeployError, match=words):
            onnx_from_model("r50", out, **kwargs)
    with pytest.raises(PfdeployError, match="unknown model"):
        onnx_from_model("resnet9000", out)
    assert not out.exists()


def test_failed_export_leaves_no_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PfdeployError):
        onnx_from_model("r50", tmp_path / "m.onnx", checkpoint=bad, overrides=cheap("r50"))
    assert list(tmp_path.iterdir()) == [bad]


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_equals_pytorch(name, tmp_path):
    ckpt = perturbed_checkpoint(name, tmp_path / "w.pth")
    path = onnx_from_model(name, tmp_path / "m.onnx", checkpoint=ckpt)
    model = model_from_metadata(read_metadata(path), ckpt)
    assert int(read_metadata(path)["pfdeploy.pf_layers"]) == get_config(name).pf_layers
    session = ort_session_from_onnx(path)
    for batch in (1, 3):
        x = _inputs(batch, 224, seed=batch)
        assert_close(torch_logits(model, x), session.run(None, {"input": x})[0])
    fixed = onnx_from_model(name, tmp_path / "f.onnx", checkpoint=ckpt, batch=2, input_format="uint8-nhwc")
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    got = ort_session_from_onnx(fixed).run(None, {"input": images})[0]
    assert_close(torch_logits(model, normalize_uint8(images, preprocess_for(name))), got)
