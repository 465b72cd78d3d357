"""pfdeploy's fused pool+1x1 kernel: its tiled algorithm (PyTorch, here), the Triton kernel under Triton's
CPU interpreter (where Triton is installed) and on CUDA (GPU machines), all against PyTorch's own ops."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pfdeploy.kernels.reference import (
    check_pool_gemm_args,
    pool_gemm_composite,
    pool_gemm_tiled,
    tile_order,
)

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (pip install 'pfdeploy[kernels]')")
# Ragged shapes: M, N and K none a multiple of the tiles, a 1-pixel-wide image, one image.
SHAPES = [(2, 5, 7, 20, 24), (3, 4, 4, 33, 17), (1, 1, 6, 16, 16)]


def operands(shape, dtype=torch.float32, seed=0):
    batch, height, width, k, n = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, height, width, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    r = torch.randn(batch, height, width, n, generator=gen).to(dtype)
    return x, w, b, r


def unfused(x, w, b, r, pre_act, relu):
    """What the model computes before fusion: NCHW max_pool2d, GELU, a 1x1 convolution, + residual, ReLU."""
    nchw = x.permute(0, 3, 1, 2)
    pooled = F.max_pool2d(torch.relu(nchw) if pre_act == "relu" else nchw, 3, stride=1, padding=1)  # ReLU first
    if pre_act == "gelu":
        pooled = F.gelu(pooled)
    y = F.conv2d(pooled, w[:, :, None, None], b)
    if r is not None:
        y = y + r.permute(0, 3, 1, 2)
    return (torch.relu(y) if relu else y).permute(0, 2, 3, 1)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("pre_act,residual,relu", [("none", False, False), ("relu", True, True),
                                                   ("gelu", True, False), ("gelu", False, True)])
def test_tiled_algorithm_and_composite_compute_the_unfused_layers(shape, pre_act, residual, relu):
    x, w, b, r = operands(shape)
    r = r if residual else None
    want = unfused(x, w, b, r, pre_act, relu)
    torch.testing.assert_close(pool_gemm_composite(x, w, b, r, pre_act, relu), want, rtol=1e-5, atol=1e-5)
    tiled = pool_gemm_tiled(x, w, b, r, pre_act, relu, block_m=16, block_n=16, block_k=16, group_m=2)
    torch.testing.assert_close(tiled, want, rtol=1e-5, atol=1e-5)


def test_padding_is_minus_infinity_not_zero():
    # All-negative inputs: a zero-padded pool would return 0 at the border; max_pool2d never does.
    x = -1.0 - torch.rand(1, 3, 3, 16, generator=torch.Generator().manual_seed(3))
    eye = torch.eye(16)
    y = pool_gemm_tiled(x, eye, torch.zeros(16), block_m=16, block_n=16, block_k=16)
    assert (y < 0).all()
    torch.testing.assert_close(y, unfused(x, eye, torch.zeros(16), None, "none", False))


def test_fp16_tiles_round_like_the_kernel():
    x, w, b, r = operands((2, 4, 5, 32, 24), torch.float16, seed=5)
    got = pool_gemm_tiled(x, w, b, r, "gelu", True, block_m=16, block_n=16, block_k=16)
    want = unfused(x.float(), w.float(), b.float(), r.float(), "gelu", True)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("num_m,num_n,group", [(5, 3, 2), (1, 4, 8), (7, 1, 3)])
def test_tile_order_visits_every_tile_once_in_groups(num_m, num_n, group):
    order = list(tile_order(num_m, num_n, group))
    assert sorted(order) == [(m, n) for m in range(num_m) for n in range(num_n)]
    first_group = order[: min(group, num_m) * num_n]
    assert {m for m, _ in first_group} == set(range(min(group, num_m)))  # GROUP_M rows of tiles first


def test_bad_operands_are_refused():
    x, w, b, r = operands((1, 2, 2, 16, 8))
    with pytest.raises(ValueError, match="K of x"):
        check_pool_gemm_args(x, w[:, :8], b, None, "none")
    with pytest.raises(ValueError, match="residual"):
        check_pool_gemm_args(x, w, b, r[..., :4], "none")
    with pytest.raises(ValueError, match="pre_act"):
        check_pool_gemm_args(x, w, b, None, "silu")


INTERPRETED = """
import torch
from pfdeploy.kernels.ops import register_op
from pfdeploy.kernels.pool_gemm import launch
from pfdeploy.kernels.reference import pool_gemm_tiled, pool_gemm_composite
g = torch.Generator().manual_seed(0)
for shape in [(2, 5, 7, 20, 24), (3, 4, 4, 33, 17)]:
    B, H, W, K, N = shape
    x, w, b, r = (torch.randn(B, H, W, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g),
                  torch.randn(B, H, W, N, generator=g))
    for act, res, relu in (("none", None, False), ("gelu", r, True), ("relu", r, True)):
        y = torch.empty(B, H, W, N)
        launch(x, w, b, res, act, relu, y, blocks=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2))
        tiled = pool_gemm_tiled(x, w, b, res, act, relu, block_m=16, block_n=16, block_k=16, group_m=2)
        torch.testing.assert_close(y, tiled, rtol=1e-5, atol=1e-4)
    op = register_op()  # the registered op (wrap_triton, output allocation, a None residual)
    torch.testing.assert_close(op(x, w, b, None, "gelu", False), pool_gemm_composite(x, w, b, None, "gelu", False),
                               rtol=1e-5, atol=1e-4)


class Tail(torch.nn.Module):  # torch.export keeps the op as one node, with a dynamic batch (what --format pt2 sees)
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = torch.nn.Parameter(w), torch.nn.Parameter(b)

    def forward(self, x):
        return torch.ops.pfdeploy.pool_gemm.default(x, self.w, self.b, None, "gelu", True)


tail = Tail(w, b).eval()
program = torch.export.export(tail, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
assert [n.target for n in program.graph.nodes if n.op == "call_function"] == [torch.ops.pfdeploy.pool_gemm.default]
x5 = torch.randn(5, H, W, K, generator=g)
with torch.no_grad():
    torch.testing.assert_close(program.module()(x5), pool_gemm_composite(x5, w, b, None, "gelu", True),
                               rtol=1e-5, atol=1e-4)
print("interpreted kernel ok")
"""


@needs_triton
def test_triton_kernel_under_the_interpreter_matches_the_tiled_reference():
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "interpreted kernel ok" in done.stdout


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.float32, 1e-4)])
def test_triton_kernel_on_cuda_matches_pytorch(dtype, tol):
    from pfdeploy.kernels.ops import pool_gemm, register_op
    from pfdeploy.kernels.pool_gemm import launch

    register_op()
    x, w, b, r = operands((4, 14, 14, 64, 256), dtype, seed=7)
    x, w, b, r = (t.cuda() for t in (x, w, b, r))
    scale = unfused(x.float(), w.float(), b.float(), r.float(), "none", True).abs().max().item()
    for pre_act, res, relu in (("relu", r, True), ("gelu", r, False), ("none", None, False)):
        want = unfused(x.float(), w.float(), b.float(), None if res is None else res.float(), pre_act, relu)
        y = torch.empty(4, 14, 14, 256, dtype=dtype, device="cuda")  # one tile config: one compile per variant
        launch(x, w, b, res, pre_act, relu, y, blocks={"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8})
        torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol * scale)
    got = pool_gemm(x, w, b, r, "relu", True)  # the registered op, autotuned
    want = unfused(x.float(), w.float(), b.float(), r.float(), "relu", True)
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol * scale)
