"""Multiply-accumulate counting by forward hooks (convolutions, linear layers, attention matmuls)."""

from __future__ import annotations

import torch
from torch import nn

from pfdeploy.models.layers import Attention


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kernel = module.kernel_size[0] * module.kernel_size[1]
    return output.numel() * (module.in_channels // module.groups) * kernel


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def _attention_macs(module: Attention, output: torch.Tensor) -> int:
    batch = output.shape[0]
    # q @ k^T and attn @ v: tokens x tokens x head_dim per head, twice.
    return 2 * batch * module.num_heads * module.tokens * module.tokens * module.head_dim


LAYER_COUNTERS = {nn.Conv2d: _conv_macs, nn.Linear: _linear_macs}


def count_macs(model: nn.Module, input_size: tuple[int, int, int], attention: bool = False) -> int:
    """MACs of one forward pass on a single image of `input_size` (C, H, W).

    By default this counts convolutions and linear layers only, the convention of the published
    figures and of the layout fixtures; `attention=True` adds the two attention matmuls.
    """
    total = 0
    counters = {**LAYER_COUNTERS, **({Attention: _attention_macs} if attention else {})}

    def hook(module, _inputs, output):
        nonlocal total
        total += counters[type(module)](module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in counters]
    try:
        with torch.no_grad():
            device = next(model.parameters()).device  # "meta" counts without computing
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())
