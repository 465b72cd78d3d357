"""BatchNorm folding (pfdeploy.runtime.fold): exact up to FP32 rounding, a pure function, checked by verify."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_helpers import assert_close, perturbed_checkpoint, tiny
from torch import nn

from pfdeploy.models import create_model, load_checkpoint
from pfdeploy.runtime import load
from pfdeploy.runtime.fold import conv_with_bn_folded, count_batchnorms, fold_batchnorm
from pfdeploy.runtime.torch_backend import TorchSession
from pfdeploy.runtime.verify import verify_artifact, verify_session


def _trained_bn(bn: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
        bn.running_var.copy_(0.2 + torch.rand(bn.num_features, generator=gen))
        bn.weight.copy_(1 + 0.3 * torch.randn(bn.num_features, generator=gen))
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
    return bn.eval()


@pytest.mark.parametrize("groups,bias", [(1, False), (1, True), (8, True)])
def test_folded_conv_computes_conv_then_batchnorm(groups, bias):
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=groups, bias=bias)
    bn = _trained_bn(nn.BatchNorm2d(16, eps=1e-3), seed=groups)
    x = torch.randn(2, 8, 9, 9, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = bn(conv(x)), conv_with_bn_folded(conv, bn)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_conv_then_batchnorm_pairs_are_folded():
    model = nn.Sequential(_trained_bn(nn.BatchNorm2d(3), 1), nn.Conv2d(3, 4, 1), _trained_bn(nn.BatchNorm2d(4), 2),
                          nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(), _trained_bn(nn.BatchNorm2d(4), 3)).eval()
    folded = fold_batchnorm(model)
    assert [type(m).__name__ for m in folded] == ["BatchNorm2d", "Conv2d", "Identity", "ReLU", "Conv2d", "ReLU",
                                                  "BatchNorm2d"]
    assert count_batchnorms(model) == 3  # the model given is not changed
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["r50", "r50_max", "r50_hybrid", "vit_ti_max"])
def test_folded_model_equals_the_model_to_fp32_rounding(tmp_path, name):
    kwargs = {**tiny(name), "num_classes": 10}
    model = load_checkpoint(create_model(name, **kwargs), perturbed_checkpoint(name, tmp_path / "w.pth", kwargs)).eval()
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0
    assert (count_batchnorms(model) > 0) == name.startswith("r50")  # the model given keeps its BatchNorms
    assert folded.pretrained_cfg is not None
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, got = model(x).numpy(), folded(x).numpy()
    assert np.ptp(ref) > 0.05
    assert_close(ref, got, rel=1e-5)


def test_torch_sessions_fold_by_default_and_verify_passes_them(cheap_onnx, cheap_checkpoint):
    path, ckpt = cheap_onnx("r50_hybrid"), cheap_checkpoint("r50_hybrid")
    report = verify_artifact(path, checkpoint=ckpt, backend="torch", samples=4, batch=2)
    assert report.passed and report.backend == "torch" and report.precision == "fp32"
    assert max(s["max_rel"] for s in report.sources.values()) < 1e-5
    with load(path, backend="torch", checkpoint=ckpt) as folded:
        assert count_batchnorms(folded._model) == 0 and folded.describe()["plan"]["fold_bn"]
    with load(path, backend="torch", checkpoint=ckpt, fold_bn=False) as plain:
        assert count_batchnorms(plain._model) > 0


def test_verify_session_fails_a_wrong_fold(cheap_onnx, cheap_checkpoint):
    path, ckpt = cheap_onnx("r50_hybrid"), cheap_checkpoint("r50_hybrid")
    with load(path, backend="torch", checkpoint=ckpt, fold_bn=False) as plain:
        model = plain._model
        wrong = fold_batchnorm(model)
        conv = wrong.layer1[0].reduction_block[0]
        with torch.no_grad():
            conv.bias.add_(0.5)  # the mistake a fold without the mean would make
        with TorchSession(wrong, metadata=plain.metadata, fold_bn=False) as broken:
            report = verify_session(broken, model, samples=3, batch=3)
    assert not report.passed and report.sources["random"]["failures"]
