"""ResNet-50 family with parameter-free spatial ops (R50, R50-max, R50-hybrid).

Module names follow the authors' reference code so that published checkpoints load unchanged:
`conv1.{0,1}`, `layer{1..4}.{i}.{reduction_block,conv_block,expansion_block,downsample}`, `fc`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from pfdeploy.models.validate import common_problem, int_problem, ints_problem

KINDS = ("conv", "max", "hybrid")
STAGES = 4  # layer1..layer4, as in the authors' code and every published checkpoint
MIN_IMG_SIZE = 32  # the stem and three strided stages downsample 32x


def conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv2d (no bias) + BatchNorm2d (+ ReLU) as a Sequential indexed 0, 1(, 2)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def spatial_op(kind: str, width: int, stride: int) -> nn.Module:
    """The block's spatial op: 'conv' (3x3 conv), 'max' (3x3 max-pool) or 'hybrid'."""
    if kind == "conv":
        return conv_bn(width, width, 3, stride)
    if kind == "max" or (kind == "hybrid" and stride == 1):
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if kind == "hybrid":
        return nn.Sequential(nn.AvgPool2d(2, stride=2), conv_bn(width, width, 3, 1))
    raise ValueError(f"unknown spatial op {kind!r}; expected conv, max or hybrid")


def config_problem(args: dict[str, Any]) -> str | None:
    """What is wrong with PFResNet's arguments `args` (None if nothing): 4 stages of >= 1 block each,
    a known kind, positive widths, img_size >= 32."""
    if not isinstance(args["kind"], str) or args["kind"] not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}, got {args['kind']!r}"
    return (ints_problem("layers", args["layers"], range(STAGES, STAGES + 1))
            or int_problem("base_width", args["base_width"])
            or common_problem(args, MIN_IMG_SIZE))


def largest_activation(args: dict[str, Any]) -> int:
    """Elements of the largest activation of one image (the stem's and layer1's maps are the largest)."""
    return max(args["in_chans"], args["base_width"]) * args["img_size"] ** 2


class Bottleneck(nn.Module):
    """1x1 reduce -> spatial op (stride s) -> 1x1 expand, residual add, ReLU."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, kind: str):
        super().__init__()
        out_ch = width * self.expansion
        self.reduction_block = conv_bn(in_ch, width)
        self.conv_block = spatial_op(kind, width, stride)
        self.expansion_block = conv_bn(width, out_ch, relu=False)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = conv_bn(in_ch, out_ch, 1, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.expansion_block(self.conv_block(self.reduction_block(x)))
        return self.relu(out + identity)


class PFResNet(nn.Module):
    """ResNet v1.5 whose bottleneck spatial op is chosen by `kind` ('conv', 'max', 'hybrid')."""

    def __init__(
        self,
        kind: str = "conv",
        layers: Sequence[int] = (3, 4, 6, 3),
        base_width: int = 64,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
    ):
        super().__init__()
        self.kind = kind
        self.img_size = img_size
        self.conv1 = conv_bn(in_chans, base_width, 7, 2)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = base_width
        for index, blocks in enumerate(layers):
            width = base_width * 2**index
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(blocks):
                stage.append(Bottleneck(in_ch, width, stride if block == 0 else 1, kind))
                in_ch = width * Bottleneck.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Image batch (N, 3, H, W) -> final feature map (N, C, H/32, W/32)."""
        x = self.maxpool(self.conv1(x))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """Feature map -> logits (global average pool, then `fc`)."""
        return self.fc(self.avgpool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
