"""Per-model facts for `pfdeploy list` / `info`: parameters, MACs, parameter-free layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pfdeploy.models.layers import MaxPoolMixer
from pfdeploy.models.macs import count_macs, count_parameters
from pfdeploy.models.registry import create_model, get_config
from pfdeploy.models.resnet import Bottleneck


def parameter_free_layers(model: nn.Module) -> list[str]:
    """Names of the parameter-free spatial ops: pooling conv_blocks and max-pool token mixers."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, MaxPoolMixer):
            names.append(name)
        elif isinstance(module, Bottleneck):
            op = module.conv_block
            first = op[0] if isinstance(op, nn.Sequential) else op
            if isinstance(first, (nn.MaxPool2d, nn.AvgPool2d)):
                names.append(f"{name}.conv_block")
    return names


def model_summary(name: str, **overrides: Any) -> dict[str, Any]:
    """Name, paper name, parameters, MACs, parameter-free layers and preprocessing of a model."""
    cfg = get_config(name)
    with torch.device("meta"):  # shapes only: no weights are allocated or initialised
        model = create_model(cfg.name, **overrides)
    size = model.img_size
    return {
        "name": cfg.name,
        "paper_name": cfg.paper_name,
        "family": cfg.family,
        "parameters": count_parameters(model),
        "macs": count_macs(model, (3, size, size)),
        "pf_layers": len(parameter_free_layers(model)),
        "input_size": [3, size, size],
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "interpolation": cfg.interpolation,
        "crop_pct": cfg.crop_pct,
        "num_classes": cfg.num_classes,
        "aliases": list(cfg.aliases),
    }
