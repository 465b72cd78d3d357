"""Same inputs, same logits through every backend available here (torch CPU, onnxruntime CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_helpers import TINY_GRAPHS, assert_close

from pfdeploy.errors import PfdeployError
from pfdeploy.models import list_models
from pfdeploy.runtime import load
from pfdeploy.runtime.torch_backend import TorchSession

# The tolerances are relative to each reference's logit range (export_helpers.assert_close), not
# floored at 1.0; the artifacts are exported from perturbed checkpoints (every weight non-trivial).


@pytest.mark.parametrize("name", TINY_GRAPHS)
def test_torch_and_onnxruntime_agree_on_every_model(cheap_onnx, cheap_checkpoint, name):
    path = cheap_onnx(name)
    with load(path) as ort, load(path, backend="torch", checkpoint=cheap_checkpoint(name)) as pt:
        assert (ort.backend, pt.backend) == ("onnxruntime", "torch")
        assert ort.input_spec.shape == pt.input_spec.shape == (None, 3, 32, 32)
        assert ort.metadata["pfdeploy.model"] == pt.metadata["pfdeploy.model"] == name
        x = ort.input_spec.example(3, seed=7)
        ref = pt(x)
        assert ref.shape == (3, 10) and ref.dtype == np.float32
        assert np.ptp(ref) > 0.05  # distinct logits: not a degenerate comparison
        assert_close(ref, ort(x))


@pytest.mark.parametrize("name", ["r50_hybrid", "vit_ti_max", "pit_ti_max"])
def test_uint8_nhwc_artifacts_agree_and_declare_their_layout(cheap_onnx, cheap_checkpoint, name):
    path = cheap_onnx(name, input_format="uint8-nhwc")
    with load(path) as ort, load(path, backend="torch", checkpoint=cheap_checkpoint(name)) as pt:
        for spec in (ort.input_spec, pt.input_spec):
            assert (spec.dtype, spec.layout, spec.shape) == ("uint8", "NHWC", (None, 32, 32, 3))
        x = ort.input_spec.example(2, seed=3)
        assert_close(pt(x), ort(x))


def test_torch_tensors_give_the_numpy_result(cheap_onnx, cheap_checkpoint):
    path = cheap_onnx("vit_ti_max")
    with load(path) as ort, load(path, backend="torch", checkpoint=cheap_checkpoint("vit_ti_max")) as pt:
        x = ort.input_spec.example(2, seed=5)
        t = torch.from_numpy(x)
        np.testing.assert_array_equal(ort(t), ort(x))
        np.testing.assert_array_equal(pt(t), pt(x))


def test_static_batch_artifact_declares_its_batch(cheap_onnx):
    with load(cheap_onnx("r50", batch=2)) as ort:
        assert (ort.input_spec.min_batch, ort.input_spec.max_batch) == (2, 2)
        assert ort(ort.input_spec.example(2)).shape == (2, 10)
        with pytest.raises(PfdeployError, match="batch range 2..2"):
            ort(ort.input_spec.example(3))


def test_fp16_graph_stays_close_to_fp32_torch(cheap_onnx, cheap_checkpoint):
    path = cheap_onnx("r50_hybrid", precision="fp16")
    with load(path) as ort, load(path, backend="torch", checkpoint=cheap_checkpoint("r50_hybrid")) as pt:
        assert ort.precision == "fp16" and ort.input_spec.dtype == "float32"  # FP32 IO kept
        x = ort.input_spec.example(4, seed=2)
        ref = pt(x)
        got = ort(x)
        assert not np.array_equal(got, ref)  # really computed in FP16
        assert_close(ref, got, rel=2e-2)


def test_torch_channels_last_and_registered_name(cheap):
    overrides = cheap("r50_max")
    with load("r50_max", num_classes=10, overrides=overrides) as plain:
        model = plain._model
        with TorchSession(model, channels_last=True, metadata=plain.metadata) as cl:
            x = plain.input_spec.example(2)
            assert_close(plain(x), cl(x))
        assert plain.metadata["pfdeploy.checkpoint_sha256"] == "random"
        assert plain.metadata["pfdeploy.num_classes"] == "10" and plain(plain.input_spec.example(1)).shape == (1, 10)
        assert plain.preprocess.size == 32


def test_preprocess_option_replaces_the_recorded_one(cheap_onnx):
    from pfdeploy.calibration.preprocess import Preprocess

    pre = Preprocess(32, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with load(cheap_onnx("r50"), preprocess=pre) as ort:
        assert ort.preprocess == pre
    with pytest.raises(PfdeployError, match="normalizes inside the graph"):
        load(cheap_onnx("r50_hybrid", input_format="uint8-nhwc"), preprocess=pre)


@pytest.mark.slow
def test_torch_compile_gives_the_eager_logits(cheap):
    with load("r50_hybrid", num_classes=10, overrides=cheap("r50_hybrid")) as eager:
        with load(eager._model, compile=True) as compiled:
            assert compiled.metadata["pfdeploy.checkpoint_sha256"] == "in-memory"
            x = eager.input_spec.example(2)
            assert_close(eager(x), compiled(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_real_size_models_agree(tmp_path, name):
    from export_helpers import perturbed_checkpoint

    from pfdeploy.export import onnx_from_model

    ckpt = perturbed_checkpoint(name, tmp_path / "w.pth")
    path = onnx_from_model(name, tmp_path / f"{name}.onnx", checkpoint=ckpt)
    with load(path) as ort, load(path, backend="torch", checkpoint=ckpt) as pt:
        assert ort.input_spec.shape == (None, 3, 224, 224)
        x = ort.input_spec.example(2, seed=11)
        assert_close(pt(x), ort(x), rel=5e-4)
