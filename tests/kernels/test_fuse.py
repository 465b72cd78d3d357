"""fuse_pf_layers: which layers it fuses, and that the fused model computes the model (CPU: PyTorch's ops;
CUDA: the Triton kernel, in the gpu tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_helpers import perturbed_checkpoint, tiny

from pfdeploy.kernels import count_fused, fuse_pf_layers
from pfdeploy.kernels.fuse import FusedMaxPoolBottleneck, FusedPoolMixerBlock
from pfdeploy.models import create_model, load_checkpoint
from pfdeploy.models.resnet import Bottleneck
from pfdeploy.runtime.fold import count_batchnorms

# Two blocks in the first two stages: stride-1 max-pool blocks after the downsampling ones.
RESNET = {"layers": (2, 2, 1, 1), "base_width": 8, "img_size": 32}
# (model, overrides, fused layers): R50-max fuses every stride-1 block (layer1's two, the second of layer2);
# R50-hybrid's stride-1 blocks are max-pool too; R50 has none; the transformers fuse every max-pool mixer
# (odd blocks; PiT: one per stage).
CASES = [("r50", RESNET, 0), ("r50_max", RESNET, 3), ("r50_hybrid", RESNET, 3),
         ("vit_ti_max", tiny("vit_ti_max"), 1), ("pit_ti_max", tiny("pit_ti_max"), 3)]


def trained_like(name, overrides, tmp_path):
    """The model with every weight and statistic non-trivial (perturbed checkpoint), eval mode."""
    kwargs = {**overrides, "num_classes": 10}
    ckpt = perturbed_checkpoint(name, tmp_path / f"{name}.pth", kwargs)
    return load_checkpoint(create_model(name, **kwargs), ckpt).eval()


@pytest.mark.parametrize("name,overrides,expected", CASES, ids=[c[0] for c in CASES])
def test_fused_model_computes_the_model(tmp_path, name, overrides, expected):
    model = trained_like(name, overrides, tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_pf_layers(model)
    assert count_fused(fused) == expected
    assert count_batchnorms(fused) == 0
    x = torch.randn(3, 3, overrides["img_size"], overrides["img_size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(x).numpy(), fused(x).numpy()
    assert np.ptp(ref) > 0.05
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input model is unchanged


def test_only_stride_1_max_pool_blocks_are_fused(tmp_path):
    fused = fuse_pf_layers(trained_like("r50_max", RESNET, tmp_path))
    assert isinstance(fused.layer1[0], FusedMaxPoolBottleneck) and isinstance(fused.layer1[1], FusedMaxPoolBottleneck)
    assert type(fused.layer2[0]) is Bottleneck  # stride 2: its pool also downsamples, left alone
    assert isinstance(fused.layer2[1], FusedMaxPoolBottleneck)
    assert type(fused.maxpool) is torch.nn.MaxPool2d  # the stem's 3x3/s2 pool
    hybrid = fuse_pf_layers(trained_like("r50_hybrid", RESNET, tmp_path))
    assert type(hybrid.layer2[0]) is Bottleneck  # avgpool + 3x3 conv


def test_mixer_blocks_are_fused_and_attention_blocks_kept(tmp_path):
    fused = fuse_pf_layers(trained_like("vit_ti_max", tiny("vit_ti_max"), tmp_path))
    kinds = [type(b).__name__ for b in fused.blocks]
    assert kinds == ["Block", "FusedPoolMixerBlock"]
    assert isinstance(fused.blocks[1], FusedPoolMixerBlock)


@pytest.mark.gpu
@pytest.mark.parametrize("name,overrides,expected", [CASES[1], CASES[3]], ids=["r50_max", "vit_ti_max"])
def test_fused_model_on_cuda_runs_the_kernel_and_matches(tmp_path, name, overrides, expected):
    from pfdeploy.kernels import triton_problem

    if triton_problem():
        pytest.skip(triton_problem())
    model = trained_like(name, overrides, tmp_path)
    fused = fuse_pf_layers(model).cuda()
    x = torch.randn(4, 3, overrides["img_size"], overrides["img_size"], generator=torch.Generator().manual_seed(2))
    from pfdeploy.runtime.torch_backend import tf32_mode

    with torch.no_grad(), tf32_mode(False):  # FP32 means FP32 on both sides (the kernel uses IEEE dots)
        ref = model(x).numpy()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            got = fused(x.cuda().contiguous(memory_format=torch.channels_last)).cpu().numpy()
    assert any("pool_gemm" in e.name for e in prof.events())  # the Triton kernel ran
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
