"""ort_options: the CPU session's in-memory Attention fusion computes what the exported graph does,
fuses every attention block (and nothing else), and leaves the ONNX file standard and unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_helpers import CHEAP_GRAPHS, assert_close, torch_logits

from pfdeploy._io import sha256_file
from pfdeploy.export import fp16_from_onnx, model_from_metadata, read_metadata
from pfdeploy.models.layers import Attention
from pfdeploy.runtime.ort_options import attention_fused_for_cpu, ort_session_from_onnx


def _attention_blocks(model) -> int:
    return sum(isinstance(m, Attention) for m in model.modules())


def _inputs(batch: int = 3, size: int = 64) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("name", CHEAP_GRAPHS)
def test_attention_fusion_covers_every_block_and_matches(name, cheap_exports):
    path, ckpt = cheap_exports(name)
    digest = sha256_file(path)
    model = model_from_metadata(read_metadata(path), ckpt)
    proto = onnx.load(str(path))
    assert attention_fused_for_cpu(proto) == _attention_blocks(model)
    assert sum(n.op_type == "Attention" and n.domain == "com.microsoft" for n in proto.graph.node) == \
        _attention_blocks(model)
    x = _inputs()
    fused = ort_session_from_onnx(path).run(None, {"input": x})[0]
    plain = ort_session_from_onnx(path, fuse_attention=False).run(None, {"input": x})[0]
    assert_close(plain, fused)
    assert_close(torch_logits(model, x), fused)
    # The artifact itself is untouched: still standard ONNX only.
    assert sha256_file(path) == digest
    assert {n.domain for n in onnx.load(str(path)).graph.node} <= {"", "ai.onnx"}


def test_block_with_an_escaping_intermediate_is_left_alone(cheap_exports):
    path, _ = cheap_exports("vit_s")
    proto = onnx.load(str(path))
    total = attention_fused_for_cpu(onnx.load(str(path)))
    assert total >= 2
    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    proto.graph.output.append(onnx.helper.make_tensor_value_info(softmax.output[0], onnx.TensorProto.FLOAT, None))
    assert attention_fused_for_cpu(proto) == total - 1
    assert softmax.output[0] in {o for n in proto.graph.node for o in n.output}


def test_fp16_graph_is_not_fused(cheap_exports, tmp_path):
    """ONNX Runtime's CPU Attention kernel is float32 only: fp16 weights must not match."""
    path, _ = cheap_exports("vit_ti_max")
    half = fp16_from_onnx(path, tmp_path / "half.onnx")
    assert attention_fused_for_cpu(onnx.load(str(half))) == 0
    assert ort_session_from_onnx(half).run(None, {"input": _inputs()})[0].shape == (3, 1000)
