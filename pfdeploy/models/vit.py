"""ViT without class token whose odd blocks use the max-pool token mixer (ViT-*-max, ViT-S)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pfdeploy.limits import MAX_BLOCKS, MAX_IMG_SIZE
from pfdeploy.models.layers import LAYER_NORM_EPS, Block, mixer_is_pooling
from pfdeploy.models.validate import bool_problem, common_problem, int_problem, ratio_problem


def config_problem(args: dict[str, Any]) -> str | None:
    """What is wrong with PFViT's arguments `args` (None if nothing): positive sizes, heads dividing
    embed_dim, img_size a multiple of patch_size."""
    problem = (common_problem(args) or int_problem("embed_dim", args["embed_dim"])
               or int_problem("num_heads", args["num_heads"]) or int_problem("depth", args["depth"], 1, MAX_BLOCKS)
               or int_problem("patch_size", args["patch_size"], 1, MAX_IMG_SIZE)
               or bool_problem("pooling", args["pooling"]) or ratio_problem("mlp_ratio", args["mlp_ratio"],
                                                                            args["embed_dim"]))
    if problem:
        return problem
    if args["embed_dim"] % args["num_heads"]:
        return (f"num_heads {args['num_heads']} must divide embed_dim {args['embed_dim']} (each head takes "
                "embed_dim / num_heads channels)")
    if args["img_size"] % args["patch_size"]:
        return f"img_size {args['img_size']} must be a multiple of patch_size {args['patch_size']}"
    return None


def largest_activation(args: dict[str, Any]) -> int:
    """Elements of the largest activation of one image: the input, an MLP or mixer hidden layer, or the
    attention matrix of block 0 (always attention) over every token."""
    tokens = (args["img_size"] // args["patch_size"]) ** 2
    hidden = max(int(args["embed_dim"] * args["mlp_ratio"]), 3 * args["embed_dim"])
    return max(args["in_chans"] * args["img_size"] ** 2, tokens * hidden, args["num_heads"] * tokens**2)


class PatchEmbed(nn.Module):
    """Conv2d patchify (`proj`) -> tokens (N, side*side, dim)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1).flatten(1, 2)  # NHWC view: see layers.MaxPoolMixer


class PFViT(nn.Module):
    """ViT: patch embedding + learned pos_embed, `depth` pre-norm blocks, LayerNorm, token mean, head."""

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        pooling: bool = True,
        patch_size: int = 16,
        img_size: int = 224,
        num_classes: int = 1000,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        side = img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, embed_dim))
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, side, mixer_is_pooling(i, pooling), mlp_ratio)
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.num_features = embed_dim
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward_features(self, x: Tensor) -> Tensor:
        """Image batch -> normalized tokens (N, tokens, dim)."""
        x = self.patch_embed(x) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(self, x: Tensor) -> Tensor:
        """Tokens -> logits (mean over tokens, then `head`)."""
        return self.head(x.mean(dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
