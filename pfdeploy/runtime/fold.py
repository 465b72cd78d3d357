"""Inference preparation: BatchNorm folded into the convolution before it.

An inference BatchNorm is a per-channel affine map, y = (x - mean) * gamma / sqrt(var + eps) + beta,
so after a convolution it can live inside the convolution's weights and bias:

    W' = W * s[:, None, None, None],  b' = (b - mean) * s + beta,  s = gamma / sqrt(var + eps)

`fold_batchnorm` does that for every BatchNorm2d that directly follows a Conv2d inside an
nn.Sequential (how pfdeploy's ResNets hold every conv/BN pair: `conv_bn`, the stem, the downsample,
the hybrid's avgpool + conv_bn), computing W' and b' in float64 and rounding once to the weight's
dtype. The result equals the original model up to float32 rounding (checked by
`pfdeploy verify --backend torch` and in tests/runtime/test_fold.py); the transformers have no
BatchNorm and come back unchanged. Used wherever pfdeploy runs PyTorch for speed (the torch backend's
sessions, the `.pt2` export); never for the PyTorch reference that artifacts are verified against.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def conv_with_bn_folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d computing bn(conv(x)) with `bn`'s running statistics (inference BatchNorm)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm2d without running statistics cannot be folded")
    weight = conv.weight.detach().to(torch.float64)
    mean, var = bn.running_mean.to(torch.float64), bn.running_var.to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                       padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(weight * scale.reshape(-1, 1, 1, 1))
        folded.bias.copy_((bias - mean) * scale + beta)
    return folded


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.num_features == conv.out_channels)


def _fold_sequentials(module: nn.Module) -> int:
    """Fold in place in every nn.Sequential under `module`; returns how many BatchNorms were folded."""
    folded = 0
    for child in [m for m in module.modules() if isinstance(m, nn.Sequential)]:  # listed before changing
        names = list(child._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = child._modules[first], child._modules[second]
            if _foldable(conv, bn):
                child._modules[first] = conv_with_bn_folded(conv, bn)
                child._modules[second] = nn.Identity()
                folded += 1
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every Conv2d -> BatchNorm2d pair of an nn.Sequential
    folded into one Conv2d with bias (the BatchNorm becomes nn.Identity, so module names and
    indices stay). `model` itself is not changed. Attributes such as `pretrained_cfg` are kept."""
    folded = copy.deepcopy(model).eval()
    count = _fold_sequentials(folded)
    log.debug("folded %d BatchNorm layers into their convolutions", count)
    return folded


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers of any dimension left in `model`."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
