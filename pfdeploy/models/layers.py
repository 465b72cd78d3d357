"""Transformer blocks shared by the ViT and PiT families: attention and the max-pool token mixer.

Grid sizes are Python ints fixed at construction, never read from tensor shapes, so an exported
graph has static reshapes (a dynamic batch only) and no shape arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_NORM_EPS = 1e-6


class Attention(nn.Module):
    """Multi-head self-attention over `tokens` tokens (`qkv`, `proj`, scale head_dim^-0.5)."""

    def __init__(self, dim: int, num_heads: int, tokens: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.tokens = tokens
        self.dim = dim
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv(x).reshape(-1, self.tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if torch.onnx.is_in_onnx_export():
            # The same math written out: exports as MatMul/Softmax/MatMul with static shapes,
            # where the exporter's SDPA decomposition reads shapes at run time (Shape/Concat).
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            out = attn.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(-1, self.tokens, self.dim))


class MaxPoolMixer(nn.Module):
    """The paper's parameter-free "efficient layer", registered under the name `attn`.

    Linear(dim, 3*dim) -> GELU -> 3x3/s1 max-pool over the (side x side) token grid -> GELU
    -> Linear(3*dim, dim).
    """

    def __init__(self, dim: int, side: int):
        super().__init__()
        self.side = side
        self.hidden = dim * 3
        self.qkv = nn.Linear(dim, self.hidden)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.proj = nn.Linear(self.hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.qkv(x))
        # Tokens are an NHWC grid; the NCHW pool sees it through permute(0, 3, 1, 2) (a view in
        # PyTorch). Exported, that Transpose pair is the pattern ONNX Runtime folds into its
        # channels-last NCHWc reorders, so the mixer runs without any standalone Transpose.
        grid = x.reshape(-1, self.side, self.side, self.hidden).permute(0, 3, 1, 2)
        x = self.pool(grid).permute(0, 2, 3, 1).reshape(-1, self.side * self.side, self.hidden)
        return self.proj(F.gelu(x))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block whose token mixer is attention or the max-pool mixer."""

    def __init__(self, dim: int, num_heads: int, side: int, pooling: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = MaxPoolMixer(dim, side) if pooling else Attention(dim, num_heads, side * side)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def mixer_is_pooling(index: int, pooling: bool) -> bool:
    """Odd-indexed blocks use the max-pool mixer when the model has pooling mixers at all."""
    return pooling and index % 2 == 1
