"""ViT without class token whose odd blocks use the max-pool token mixer (ViT-*-max, ViT-S)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pfdeploy.models.layers import LAYER_NORM_EPS, Block, mixer_is_pooling


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
