"""The Triton kernel: a 3x3/s1 max-pool fused into the input loads of the 1x1 convolution after it.

    y[m, n] = epilogue( sum_k act( max_{3x3 window of pixel m} x[., k] ) * W[n, k] + b[n] )

x is the NHWC activation (B, H, W, K) the pool reads, W the 1x1 convolution's (or Linear's) (N, K)
weight with its folded BatchNorm bias b, m = (image, row, column) one output pixel. Each program
computes a BLOCK_M x BLOCK_N tile of y: per BLOCK_K slice it loads the tile's A operand as nine
shifted, masked loads of BLOCK_M pixels (the 3x3 window; -inf outside the image, as max_pool2d
pads), takes their maximum in registers, optionally applies ReLU (the bottleneck's, moved after the
max: max commutes with it) or GELU (the MaxPoolMixer's second GELU),
and feeds it to `tl.dot` with the W tile; the pooled tensor never exists in memory. The epilogue adds
the bias, the residual (the bottleneck's identity or the transformer block's input) and a ReLU.
Neighbouring pixels share window rows, so the nine loads hit L1/L2 rather than HBM.

FP16/BF16 use the tensor cores with a float32 accumulator; FP32 asks `tl.dot` for IEEE precision
(no TF32), so FP32 stays FP32 as the torch backend promises. Imported only where Triton is installed
(`pip install 'pfdeploy[kernels]'`); pfdeploy/kernels/reference.py holds the same algorithm in
PyTorch for machines without it.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from pfdeploy.kernels.tiles import TILES_FP16, tiles_for


def _configs(tiles) -> list:
    blocks = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")
    return [triton.Config({k: t[k] for k in blocks}, num_warps=t["num_warps"], num_stages=t["num_stages"])
            for t in tiles]


#: Tile shapes autotuned per (M, N, K): large tiles for batch-256 feature maps, small ones for batch 1.
#: FP32 has its own (pfdeploy/kernels/tiles.py): the FP16 ones need 544-944 KiB of shared memory in FP32.
CONFIGS = _configs(TILES_FP16)
CONFIGS_FP32 = _configs(tiles_for(4))


@triton.jit
def pool_gemm_kernel(x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, M, N, K, H, W,
                     HAS_RESIDUAL: tl.constexpr, PRE_RELU: tl.constexpr, PRE_GELU: tl.constexpr, RELU: tl.constexpr,
                     IEEE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n  # tile order: GROUP_M rows of tiles at a time (reference.tile_order)
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # int64: B*H*W*K passes 2**31 at large batch
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    img = offs_m // (H * W)
    rem = offs_m % (H * W)
    h = rem // W
    w = rem % W
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.full((BLOCK_M, BLOCK_K), float("-inf"), x_ptr.dtype.element_ty)
        for i in tl.static_range(3):
            for j in tl.static_range(3):
                hh = h + (i - 1)
                ww = w + (j - 1)
                ok = mask_m & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                row = (img * H + hh) * W + ww
                v = tl.load(x_ptr + row[:, None] * K + offs_k[None, :], mask=ok[:, None] & mask_k[None, :],
                            other=float("-inf"))
                a = tl.maximum(a, v)
        a = tl.where(mask_m[:, None] & mask_k[None, :], a, 0.0).to(x_ptr.dtype.element_ty)
        if PRE_RELU:
            a = tl.maximum(a, 0.0).to(x_ptr.dtype.element_ty)
        if PRE_GELU:
            af = a.to(tl.float32)
            a = (0.5 * af * (1.0 + tl.erf(af * 0.7071067811865476))).to(x_ptr.dtype.element_ty)
        wt = tl.load(w_ptr + offs_n[None, :] * K + offs_k[:, None], mask=mask_k[:, None] & mask_n[None, :],
                     other=0.0)
        if IEEE:
            acc = tl.dot(a, wt, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, wt, acc)
    acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_mask = mask_m[:, None] & mask_n[None, :]
    out_off = offs_m[:, None] * N + offs_n[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(r_ptr + out_off, mask=out_mask, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(y_ptr + out_off, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


pool_gemm_autotuned = triton.autotune(configs=CONFIGS, key=["M", "N", "K"])(pool_gemm_kernel)
pool_gemm_autotuned_fp32 = triton.autotune(configs=CONFIGS_FP32, key=["M", "N", "K"])(pool_gemm_kernel)
#: Triton's CPU interpreter (TRITON_INTERPRET=1) cannot time configs: it runs this one.
INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}


def autotuned_for(dtype: torch.dtype):
    """The autotuned kernel of a dtype: FP32's own tiles (they fit in shared memory), else FP16's."""
    return pool_gemm_autotuned_fp32 if dtype == torch.float32 else pool_gemm_autotuned


def interpreting() -> bool:
    """True under Triton's interpreter (TRITON_INTERPRET=1), which runs kernels on the CPU with NumPy."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
           pre_act: str, relu: bool, y: torch.Tensor, *, wrap=None, blocks: dict | None = None) -> torch.Tensor:
    """Run the kernel into `y` (B, H, W, N) for contiguous NHWC `x` (B, H, W, K).

    wrap: torch.library.wrap_triton inside the registered op (so torch.compile and AOTInductor see the
    kernel), None to launch directly. blocks: explicit BLOCK_M/BLOCK_N/BLOCK_K/GROUP_M (the untuned
    kernel, as the interpreter tests run it); None: autotuned (INTERPRETER_BLOCKS under the interpreter).
    """
    if blocks is None and interpreting():
        blocks = INTERPRETER_BLOCKS
    batch, height, width, k = x.shape
    n = weight.shape[0]
    m = batch * height * width
    kernel = pool_gemm_kernel if blocks else autotuned_for(x.dtype)
    kernel = wrap(kernel) if wrap is not None else kernel

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    # Without a residual the kernel never reads r_ptr; pass an input (bias), not the output, so that no
    # argument aliases the one the kernel writes (torch.compile's mutation analysis sees each by name).
    kernel[grid](x, weight, bias, residual if residual is not None else bias, y, m, n, k, height, width,
                 HAS_RESIDUAL=residual is not None, PRE_RELU=pre_act == "relu", PRE_GELU=pre_act == "gelu", RELU=relu,
                 IEEE=x.dtype == torch.float32, **(blocks or {}))
    return y
