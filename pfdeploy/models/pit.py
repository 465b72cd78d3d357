"""PiT without class token whose odd blocks (within each stage) use the max-pool token mixer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pfdeploy.limits import MAX_IMG_SIZE, MAX_STAGES, MAX_WIDTH
from pfdeploy.models.layers import LAYER_NORM_EPS, Block, mixer_is_pooling
from pfdeploy.models.validate import (
    bool_problem,
    common_problem,
    int_problem,
    ints_problem,
    ratio_problem,
)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size after a convolution."""
    return (size + 2 * padding - kernel) // stride + 1


def config_problem(args: dict[str, Any]) -> str | None:
    """What is wrong with PFPiT's arguments `args` (None if nothing): one depth and one heads entry per
    stage, each stage's heads a multiple of the previous one's (the pooling conv widens in groups), a
    patch that fits the image."""
    stages = range(1, MAX_STAGES + 1)
    problem = (common_problem(args) or int_problem("base_dim", args["base_dim"])
               or ints_problem("depth", args["depth"], stages) or ints_problem("heads", args["heads"], stages, 1,
                                                                                MAX_WIDTH)
               or int_problem("patch_size", args["patch_size"], 1, MAX_IMG_SIZE)
               or int_problem("stride", args["stride"], 1, MAX_IMG_SIZE) or bool_problem("pooling", args["pooling"]))
    if problem:
        return problem
    depth, heads = list(args["depth"]), list(args["heads"])
    if len(depth) != len(heads):
        return f"depth {depth} and heads {heads} must have one entry per stage"
    if any(later % earlier for earlier, later in zip(heads, heads[1:], strict=False)):
        return (f"heads {heads}: each stage's heads must be a multiple of the previous stage's (the pooling "
                "conv widens base_dim * heads channels in groups)")
    if args["img_size"] < args["patch_size"]:
        return f"img_size {args['img_size']} is smaller than patch_size {args['patch_size']}"
    return ratio_problem("mlp_ratio", args["mlp_ratio"], args["base_dim"] * heads[0])


def largest_activation(args: dict[str, Any]) -> int:
    """Elements of the largest activation of one image: the input, or a stage's hidden layers and its
    attention matrices over its tokens."""
    side = conv_out(args["img_size"], args["patch_size"], args["stride"], 0)
    largest = args["in_chans"] * args["img_size"] ** 2
    for heads in args["heads"]:
        dim, tokens = args["base_dim"] * heads, side * side
        largest = max(largest, tokens * max(int(dim * args["mlp_ratio"]), 3 * dim), heads * tokens**2)
        side = conv_out(side, 3, 2, 1)
    return largest


class PatchConv(nn.Module):
    """Overlapping patch embedding: Conv2d(in, C0, kernel=patch, stride), padding 0."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, patch_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class PoolingConv(nn.Module):
    """Depthwise-grouped 3x3 stride-2 conv that halves the grid and widens channels."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1, groups=in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Stage(nn.Module):
    """A stage of blocks over a static (side x side) grid, taking and returning NCHW maps."""

    def __init__(self, dim: int, depth: int, heads: int, side: int, pooling: bool, mlp_ratio: float):
        super().__init__()
        self.dim = dim
        self.side = side
        self.blocks = nn.Sequential(
            *[Block(dim, heads, side, mixer_is_pooling(j, pooling), mlp_ratio) for j in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        # NCHW <-> tokens through an NHWC view (permute then reshape): ONNX Runtime folds these
        # Transposes into the channels-last reorders of the neighbouring NCHWc convolutions.
        tokens = self.blocks(x.permute(0, 2, 3, 1).reshape(-1, self.side * self.side, self.dim))
        return tokens.reshape(-1, self.side, self.side, self.dim).permute(0, 3, 1, 2)


class PFPiT(nn.Module):
    """PiT: conv patch embedding + pos_embed, three stages joined by pooling convs, norm, mean, head."""

    def __init__(
        self,
        base_dim: int = 48,
        depth: Sequence[int] = (2, 6, 4),
        heads: Sequence[int] = (3, 6, 12),
        patch_size: int = 16,
        stride: int = 8,
        pooling: bool = True,
        img_size: int = 224,
        num_classes: int = 1000,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if len(depth) != len(heads):
            raise ValueError("depth and heads must have one entry per stage")
        self.img_size = img_size
        dims = [base_dim * h for h in heads]
        side = conv_out(img_size, patch_size, stride, 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, dims[0], side, side))
        self.patch_embed = PatchConv(in_chans, dims[0], patch_size, stride)
        stages, pools = [], []
        for index, (dim, blocks, num_heads) in enumerate(zip(dims, depth, heads, strict=True)):
            stages.append(Stage(dim, blocks, num_heads, side, pooling, mlp_ratio))
            if index + 1 < len(dims):
                pools.append(PoolingConv(dim, dims[index + 1]))
                side = conv_out(side, 3, 2, 1)
        self.transformers = nn.ModuleList(stages)
        self.pools = nn.ModuleList(pools)
        self.norm = nn.LayerNorm(dims[-1], eps=LAYER_NORM_EPS)
        self.num_features = dims[-1]
        self.head = nn.Linear(dims[-1], num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward_features(self, x: Tensor) -> Tensor:
        """Image batch -> normalized tokens of the last stage (N, tokens, C_last)."""
        x = self.patch_embed(x) + self.pos_embed
        for index, stage in enumerate(self.transformers):
            x = stage(x)
            if index < len(self.pools):
                x = self.pools[index](x)
        return self.norm(x.permute(0, 2, 3, 1).flatten(1, 2))

    def forward_head(self, x: Tensor) -> Tensor:
        """Tokens -> logits (mean over tokens, then `head`)."""
        return self.head(x.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
