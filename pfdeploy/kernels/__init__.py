"""kernels: pfdeploy's own fused kernel for the parameter-free layers (Triton, CUDA).

    from pfdeploy.kernels import fuse_pf_layers
    fused = fuse_pf_layers(model)      # a copy: BatchNorm folded, 3x3/s1 max-pools fused with the next 1x1

One kernel (`pool_gemm`, pfdeploy/kernels/pool_gemm.py): the 3x3/s1 max-pool computed inside the
input loads of the 1x1 convolution (or Linear) after it, with bias, residual and ReLU in its epilogue,
so the pooled tensor is never written to memory. It covers the R50-max/R50-hybrid bottleneck and the
transformers' MaxPoolMixer (pool between two GELUs). Why this fusion and not BN+ReLU+pool: README,
"GPU: the compiled path". Triton is optional (`pip install 'pfdeploy[kernels]'`); without it, or off
CUDA, the fused model computes with PyTorch's own ops, and pfdeploy/kernels/reference.py holds the
kernel's tiling in PyTorch for tests.
"""

from pfdeploy.kernels.fuse import count_fused, fuse_pf_layers
from pfdeploy.kernels.ops import pool_gemm, triton_problem
from pfdeploy.kernels.reference import pool_gemm_composite, pool_gemm_tiled

__all__ = ["count_fused", "fuse_pf_layers", "pool_gemm", "pool_gemm_composite", "pool_gemm_tiled",
           "triton_problem"]
