"""The fused PF-layer computation in plain PyTorch: the composite form and the tiled form.

    y = epilogue(act(maxpool3x3_s1_p1(x)) @ W^T + b)        x: (B, H, W, K) NHWC, W: (N, K), y: (B, H, W, N)
    act: none, ReLU (max commutes with it: the ReLU before a pool can move after it) or GELU
    epilogue: + residual (B, H, W, N) when given, then ReLU when asked

`pool_gemm_composite` is what PyTorch computes for the unfused layers (max_pool2d, GELU, linear): the
CPU path of a fused model and the meaning of the op. `pool_gemm_tiled` runs the algorithm of the
Triton kernel (pfdeploy/kernels/pool_gemm.py) step by step: the same grid of BLOCK_M x BLOCK_N
output tiles in the same grouped order, the same K loop in BLOCK_K slices, the same 3x3 window
loaded as nine masked, shifted loads of BLOCK_M pixels (-inf outside the image, as max_pool2d pads),
the same zeroing of rows past M and columns past K before the dot, GELU in float32 rounded to the
input dtype, a float32 accumulator, and the same epilogue. It is slow (Python loops over tiles) and
exists so that the kernel's index arithmetic is tested on machines without a GPU or Triton.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

PRE_ACTS = ("none", "relu", "gelu")
SQRT1_2 = 1.0 / math.sqrt(2.0)


def check_pool_gemm_args(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None, pre_act: str) -> None:
    """Raise ValueError unless the shapes and dtypes fit the fused op (a bug in the caller, not user input)."""
    if x.dim() != 4 or weight.dim() != 2 or bias.dim() != 1:
        raise ValueError(f"pool_gemm takes x (B, H, W, K), weight (N, K), bias (N,); got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    if weight.shape[1] != x.shape[3] or bias.shape[0] != weight.shape[0]:
        raise ValueError(f"pool_gemm: K of x {x.shape[3]} / weight {tuple(weight.shape)} / bias {bias.shape[0]} differ")
    if residual is not None and tuple(residual.shape) != (*x.shape[:3], weight.shape[0]):
        raise ValueError(f"pool_gemm: residual {tuple(residual.shape)} is not (B, H, W, N)")
    if pre_act not in PRE_ACTS:
        raise ValueError(f"pool_gemm: pre_act must be one of {PRE_ACTS}, got {pre_act!r}")


def gelu_rounded(a: Tensor) -> Tensor:
    """Exact (erf) GELU computed in float32 and rounded back to a's dtype, as the kernel does."""
    af = a.float()
    return (0.5 * af * (1.0 + torch.erf(af * SQRT1_2))).to(a.dtype)


def pool_gemm_composite(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None = None,
                        pre_act: str = "none", relu: bool = False) -> Tensor:
    """The fused op's result computed by PyTorch's own max_pool2d, GELU and linear (NHWC in and out)."""
    check_pool_gemm_args(x, weight, bias, residual, pre_act)
    pooled = F.max_pool2d(x.permute(0, 3, 1, 2), 3, stride=1, padding=1).permute(0, 2, 3, 1)
    if pre_act == "gelu":
        pooled = F.gelu(pooled)
    elif pre_act == "relu":
        pooled = torch.relu(pooled)
    y = F.linear(pooled, weight, bias)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y


def tile_order(num_m: int, num_n: int, group_m: int) -> Iterator[tuple[int, int]]:
    """(pid_m, pid_n) of each program id in launch order: output tiles grouped GROUP_M rows at a time so
    that consecutive programs share input rows in L2 (the kernel's swizzle, written the same way)."""
    for pid in range(num_m * num_n):
        group = group_m * num_n
        first_m = (pid // group) * group_m
        size_m = min(num_m - first_m, group_m)
        yield first_m + (pid % group) % size_m, (pid % group) // size_m


def pool_gemm_tiled(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None = None,
                    pre_act: str = "none", relu: bool = False, *, block_m: int = 16, block_n: int = 16,
                    block_k: int = 16, group_m: int = 2) -> Tensor:
    """The Triton kernel's algorithm in PyTorch, tile by tile (see the module docstring)."""
    check_pool_gemm_args(x, weight, bias, residual, pre_act)
    batch, height, width, k_total = x.shape
    n_total = weight.shape[0]
    m_total = batch * height * width
    flat_x = x.contiguous().reshape(-1)
    flat_w = weight.contiguous().reshape(-1)
    flat_r = None if residual is None else residual.contiguous().reshape(-1)
    y = torch.empty(m_total * n_total, dtype=x.dtype)
    num_m, num_n = -(-m_total // block_m), -(-n_total // block_n)
    for pid_m, pid_n in tile_order(num_m, num_n, group_m):
        offs_m = pid_m * block_m + torch.arange(block_m)
        offs_n = pid_n * block_n + torch.arange(block_n)
        mask_m, mask_n = offs_m < m_total, offs_n < n_total
        img, rem = offs_m // (height * width), offs_m % (height * width)
        h, w = rem // width, rem % width
        acc = torch.zeros(block_m, block_n, dtype=torch.float32)
        for k0 in range(0, k_total, block_k):
            offs_k = k0 + torch.arange(block_k)
            mask_k = offs_k < k_total
            a = torch.full((block_m, block_k), float("-inf"), dtype=x.dtype)
            for i in range(3):
                for j in range(3):
                    hh, ww = h + (i - 1), w + (j - 1)
                    ok = mask_m & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
                    row = (img * height + hh) * width + ww
                    a = torch.maximum(a, _masked_load(flat_x, row[:, None] * k_total + offs_k[None, :],
                                                      ok[:, None] & mask_k[None, :], float("-inf")))
            a = torch.where(mask_m[:, None] & mask_k[None, :], a, torch.zeros((), dtype=x.dtype))
            if pre_act == "gelu":
                a = gelu_rounded(a)
            elif pre_act == "relu":
                a = torch.clamp_min(a, 0)
            wt = _masked_load(flat_w, offs_n[None, :] * k_total + offs_k[:, None], mask_k[:, None] & mask_n[None, :],
                              0.0)
            acc += a.float() @ wt.float()
        acc += _masked_load(bias, offs_n, mask_n, 0.0).float()[None, :]
        out_mask = mask_m[:, None] & mask_n[None, :]
        out_off = offs_m[:, None] * n_total + offs_n[None, :]
        if flat_r is not None:
            acc += _masked_load(flat_r, out_off, out_mask, 0.0).float()
        if relu:
            acc = torch.clamp_min(acc, 0.0)
        y[out_off[out_mask]] = acc[out_mask].to(x.dtype)
    return y.reshape(batch, height, width, n_total)


def _masked_load(flat: Tensor, offsets: Tensor, mask: Tensor, other: float) -> Tensor:
    """flat[offsets] where mask, else `other` (tl.load with mask= and other=)."""
    safe = torch.where(mask, offsets, torch.zeros_like(offsets))
    return torch.where(mask, flat[safe], torch.full((), other, dtype=flat.dtype))
