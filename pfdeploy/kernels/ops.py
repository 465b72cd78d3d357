"""`pool_gemm`: the fused op as the models call it; the Triton kernel on CUDA, PyTorch's own ops elsewhere.

On CUDA it is the custom op `torch.ops.pfdeploy.pool_gemm`, registered with `torch.library.triton_op`
so that torch.compile and torch.export/AOTInductor see the Triton kernel (wrapped by `wrap_triton`)
and can schedule it like their own. The op is registered once, on first use, and only where Triton
is installed. On any other device the same function computes `reference.pool_gemm_composite`.
"""

from __future__ import annotations

import importlib.util
import logging
import threading

import torch
from torch import Tensor

from pfdeploy.kernels.reference import check_pool_gemm_args, pool_gemm_composite

log = logging.getLogger(__name__)

OP_NAME = "pfdeploy::pool_gemm"
_registered = threading.Lock()
_op = None


def triton_problem() -> str | None:
    """Why pfdeploy's Triton kernels cannot run here (one line), or None when Triton and a CUDA GPU are present."""
    if importlib.util.find_spec("triton") is None:
        return ("pfdeploy's fused kernels need Triton: pip install 'pfdeploy[kernels]' (CUDA builds of PyTorch "
                "usually bring it)")
    if not torch.cuda.is_available():
        return "pfdeploy's fused kernels run on CUDA GPUs; none is visible to PyTorch here"
    return None


def register_op():
    """The registered `torch.ops.pfdeploy.pool_gemm` op (registering it on first call; needs Triton)."""
    global _op
    with _registered:
        if _op is None:
            _op = _define_op()
    return _op


def _define_op():
    from torch.library import triton_op, wrap_triton

    @triton_op(OP_NAME, mutates_args=())
    def pool_gemm_op(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None, pre_act: str,
                     relu: bool) -> Tensor:
        from pfdeploy.kernels.pool_gemm import launch

        x = x.contiguous()
        residual = residual.contiguous() if residual is not None else None
        y = torch.empty((*x.shape[:3], weight.shape[0]), dtype=x.dtype, device=x.device)
        return launch(x, weight.contiguous(), bias, residual, pre_act, relu, y, wrap=wrap_triton)

    @pool_gemm_op.register_fake
    def _(x, weight, bias, residual, pre_act, relu):  # shapes only (tracing, export)
        return x.new_empty((*x.shape[:3], weight.shape[0]))

    log.debug("registered %s", OP_NAME)
    return torch.ops.pfdeploy.pool_gemm.default


def pool_gemm(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None = None, pre_act: str = "none",
              relu: bool = False) -> Tensor:
    """act(maxpool3x3_s1_p1(x)) @ weight.T + bias (+ residual, ReLU) for NHWC x (B, H, W, K) -> (B, H, W, N).

    CUDA tensors: the fused Triton kernel (the op must be registered first: `register_op`, which
    `pfdeploy.kernels.fuse_pf_layers` does); others: PyTorch's max_pool2d, GELU and linear.
    """
    if x.is_cuda:
        check_pool_gemm_args(x, weight, bias, residual, pre_act)
        return torch.ops.pfdeploy.pool_gemm.default(x, weight, bias, residual, pre_act, relu)
    return pool_gemm_composite(x, weight, bias, residual, pre_act, relu)
