"""`fuse_pf_layers`: a copy of a model whose 3x3/s1 max-pools run fused with the 1x1 projection after them.

Two patterns, one op (`pfdeploy.kernels.ops.pool_gemm`):

- ResNet bottleneck with a stride-1 max-pool spatial op (every block of R50-max but the three that
  downsample; the stride-1 blocks of R50-hybrid): the reduction 1x1 conv (BatchNorm folded into its
  bias), then ONE kernel for max-pool -> ReLU (moved after the pool: max commutes with it) -> expansion
  1x1 conv + folded BatchNorm bias -> + identity -> ReLU. Two kernels per block where Inductor runs four
  (conv, ReLU+pool, conv, add+ReLU).
- Transformer block with the max-pool token mixer (ViT-max, PiT-max): LayerNorm, qkv Linear, GELU,
  then ONE kernel for max-pool over the token grid -> GELU -> proj Linear + bias -> + block input;
  the MLP half of the block is unchanged.

The BatchNorms are folded first (`pfdeploy.runtime.fold.fold_batchnorm`), so the result computes what
the model computes up to float rounding, on every device: on CUDA through the Triton kernel, elsewhere
through PyTorch's own pool and linear (tests/kernels check both). Other layers are left alone.
"""

from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import Tensor, nn

from pfdeploy.kernels.ops import pool_gemm
from pfdeploy.models.layers import Block, MaxPoolMixer
from pfdeploy.models.resnet import Bottleneck

log = logging.getLogger(__name__)


def _is_pool_s1(module: nn.Module) -> bool:
    return (type(module) is nn.MaxPool2d and module.kernel_size in (3, (3, 3)) and module.stride in (1, (1, 1))
            and module.padding in (1, (1, 1)) and module.dilation in (1, (1, 1)) and not module.ceil_mode)


def _folded_conv1x1(block: nn.Module) -> nn.Conv2d | None:
    """The 1x1 conv of a folded conv_bn(relu=False) Sequential (conv with bias, then Identity), else None."""
    if not isinstance(block, nn.Sequential) or len(block) != 2 or type(block[1]) is not nn.Identity:
        return None
    conv = block[0]
    if type(conv) is not nn.Conv2d or conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
        return None
    return conv if conv.bias is not None and conv.padding == (0, 0) else None


class FusedMaxPoolBottleneck(nn.Module):
    """A stride-1 max-pool Bottleneck: the reduction conv, then pool_gemm (pool, ReLU, expansion, bias,
    residual, ReLU). The reduction's ReLU moves into the kernel when the block is a folded conv, Identity,
    ReLU (relu(max(x)) = max(relu(x))); any other reduction block runs whole before the kernel."""

    def __init__(self, block: Bottleneck, expansion: nn.Conv2d):
        super().__init__()
        reduction = block.reduction_block
        folded_relu = (isinstance(reduction, nn.Sequential) and len(reduction) == 3 and type(reduction[0]) is nn.Conv2d
                       and type(reduction[1]) is nn.Identity and type(reduction[2]) is nn.ReLU)
        self.reduction_block = reduction[0] if folded_relu else reduction
        self.pre_act = "relu" if folded_relu else "none"
        self.downsample = block.downsample
        self.weight = nn.Parameter(expansion.weight.detach().flatten(1).clone(), requires_grad=False)
        self.bias = nn.Parameter(expansion.bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        h = self.reduction_block(x)
        y = pool_gemm(h.permute(0, 2, 3, 1), self.weight, self.bias, identity.permute(0, 2, 3, 1), self.pre_act,
                      True)
        return y.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels-last, as the model runs on CUDA


class FusedPoolMixerBlock(nn.Module):
    """A transformer Block whose mixer is MaxPoolMixer: norm1, qkv, GELU, then pool_gemm (pool, GELU,
    proj, bias, + block input); then the unchanged MLP half."""

    def __init__(self, block: Block):
        super().__init__()
        mixer = block.attn
        self.norm1, self.qkv, self.side, self.hidden = block.norm1, mixer.qkv, mixer.side, mixer.hidden
        self.dim = mixer.proj.out_features
        self.weight = nn.Parameter(mixer.proj.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(mixer.proj.bias.detach().clone(), requires_grad=False)
        self.norm2, self.mlp = block.norm2, block.mlp

    def forward(self, x: Tensor) -> Tensor:
        grid = F.gelu(self.qkv(self.norm1(x))).reshape(-1, self.side, self.side, self.hidden)
        residual = x.reshape(-1, self.side, self.side, self.dim)
        x = pool_gemm(grid, self.weight, self.bias, residual, "gelu", False).reshape(-1, self.side * self.side,
                                                                                  self.dim)
        return x + self.mlp(self.norm2(x))


def _fused(module: nn.Module) -> nn.Module | None:
    """The fused replacement of one module, or None when it is not one of the two patterns."""
    if type(module) is Bottleneck and _is_pool_s1(module.conv_block):
        expansion = _folded_conv1x1(module.expansion_block)
        return FusedMaxPoolBottleneck(module, expansion) if expansion is not None else None
    if type(module) is Block and type(module.attn) is MaxPoolMixer and _is_pool_s1(module.attn.pool):
        return FusedPoolMixerBlock(module)
    return None


def fuse_pf_layers(model: nn.Module) -> nn.Module:
    """A copy of `model` (BatchNorm folded, eval mode) with every fusable PF layer replaced (see the module
    docstring); `model` itself is not changed. Registers the CUDA op when Triton is installed."""
    import importlib.util

    from pfdeploy.runtime.fold import fold_batchnorm

    if importlib.util.find_spec("triton") is not None:
        from pfdeploy.kernels.ops import register_op

        register_op()
    fused = fold_batchnorm(model)
    count = 0
    for parent in list(fused.modules()):
        for name, child in list(parent.named_children()):
            replacement = _fused(child)
            if replacement is not None:
                setattr(parent, name, replacement)
                count += 1
    log.info("fused %d max-pool layers with the projection after them", count)
    return fused


def count_fused(model: nn.Module) -> int:
    """The fused layers of a model from `fuse_pf_layers`."""
    return sum(isinstance(m, (FusedMaxPoolBottleneck, FusedPoolMixerBlock)) for m in model.modules())
