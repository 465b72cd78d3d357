"""Trained fixtures with outlier activation channels, made by transforms that keep the FP32 function.

Trained CNNs and ViTs have a few activation channels far larger than the rest; a per-tensor INT8
scale set by them crushes every other channel. The digits fixtures have none, so these helpers
put them in without changing what the network computes:

- ResNet (`r50_hybrid_digits`): multiply channels `c` of a BatchNorm's weight and bias by `k`
  (so its output channels are x k), and divide the matching input channels of every convolution
  that reads them, after ReLU and a max-pool or average-pool (all commute with a positive
  per-channel scale), by `k`. Sites: `stem` (conv1 -> ReLU -> max-pool -> layer1's reduction and
  downsample convolutions), `layerN.reduce` (reduction -> ReLU -> [max-pool | avg-pool + conv]),
  `layerN.spatial` (the 3x3 convolution after the avg-pool -> ReLU -> expansion, stride-2 blocks).
- Transformer (`vit_ti_max_digits`): multiply channels of a LayerNorm's weight and bias by `k` and
  divide the matching input columns of the Linear reading it by `k` (the final `norm` feeds the
  head through a token mean, which commutes too). Sites: `blocks.i.norm1`, `blocks.i.norm2`, `norm`.

With a power-of-two `k` the products are exact in floating point, so the logits are bitwise (or to
the last bit) unchanged; `OutlierSpec` varies the scale, the number of channels and the sites.
Used by tests/calibration/test_outliers.py, tests/deploy/test_deploy_int8.py and
benchmarks/bench_int8_outliers.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pfdeploy.calibration.fixtures import get_fixture


@dataclass(frozen=True)
class OutlierSpec:
    """Which fixture, which sites, how many channels per site (drawn with `seed`) and by what scale."""

    fixture: str
    sites: tuple[str, ...]
    scale: float = 64.0
    channels: int = 2
    seed: int = 0

    @property
    def label(self) -> str:
        scale = f"{self.scale:g}"
        return f"{self.fixture}-x{scale}-c{self.channels}-{'+'.join(self.sites)}-s{self.seed}"


def resnet_sites(state: dict[str, torch.Tensor], layers: int = 4) -> dict[str, tuple[str, list[str]]]:
    """{site: (BatchNorm prefix whose outputs get scaled, [conv weights whose input channels compensate])}."""
    sites = {"stem": ("conv1.1", ["layer1.0.reduction_block.0.weight", "layer1.0.downsample.0.weight"])}
    for index in range(1, layers + 1):
        block = f"layer{index}.0"
        pooled = f"{block}.conv_block.1.0.weight" in state  # avg-pool + conv block; else a max-pool block
        after_reduce = f"{block}.conv_block.1.0.weight" if pooled else f"{block}.expansion_block.0.weight"
        sites[f"layer{index}.reduce"] = (f"{block}.reduction_block.1", [after_reduce])
        if pooled:
            sites[f"layer{index}.spatial"] = (f"{block}.conv_block.1.1", [f"{block}.expansion_block.0.weight"])
    return sites


def vit_sites(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, list[str]]]:
    """{site: (LayerNorm prefix, [Linear weights reading it])} of a ViT state_dict."""
    sites = {}
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        sites[f"blocks.{i}.norm1"] = (f"blocks.{i}.norm1", [f"blocks.{i}.attn.qkv.weight"])
        sites[f"blocks.{i}.norm2"] = (f"blocks.{i}.norm2", [f"blocks.{i}.mlp.fc1.weight"])
    sites["norm"] = ("norm", ["head.weight"])
    return sites


def outlier_state(spec: OutlierSpec) -> dict[str, torch.Tensor]:
    """The fixture's state_dict with outlier channels at `spec.sites` (FP32 function unchanged)."""
    fx = get_fixture(spec.fixture)
    state = {k: v.clone() for k, v in torch.load(fx.checkpoint, map_location="cpu", weights_only=True).items()}
    table = resnet_sites(state) if "conv1.1.weight" in state else vit_sites(state)
    unknown = [s for s in spec.sites if s not in table]
    if unknown:
        raise ValueError(f"unknown outlier site(s) {unknown}; choose from {sorted(table)}")
    gen = torch.Generator().manual_seed(spec.seed)
    for site in spec.sites:
        norm, readers = table[site]
        width = state[f"{norm}.weight"].shape[0]
        picked = torch.randperm(width, generator=gen)[: spec.channels]
        state[f"{norm}.weight"][picked] *= spec.scale
        state[f"{norm}.bias"][picked] *= spec.scale
        for weight in readers:
            state[weight][:, picked] /= spec.scale
    return state


def outlier_checkpoint(spec: OutlierSpec, path: str | Path) -> Path:
    """Write `outlier_state(spec)` as a plain state_dict .pth; returns the path."""
    path = Path(path)
    torch.save(outlier_state(spec), path)
    return path


def outlier_model(spec: OutlierSpec):
    """The fixture's model with the outlier weights, in eval mode."""
    from pfdeploy.models import create_model

    fx = get_fixture(spec.fixture)
    model = create_model(fx.model, num_classes=fx.num_classes, **fx.overrides)
    model.load_state_dict(outlier_state(spec))
    return model.eval()


def export_outlier(spec: OutlierSpec, folder: str | Path) -> tuple[Path, Path]:
    """(FP32 ONNX, checkpoint) of the outlier fixture, written into `folder`."""
    from pfdeploy.export import onnx_from_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fx = get_fixture(spec.fixture)
    ckpt = outlier_checkpoint(spec, folder / f"{spec.label}.pth")
    onnx_path = onnx_from_model(fx.model, folder / f"{spec.label}.fp32.onnx", checkpoint=ckpt,
                                num_classes=fx.num_classes, overrides=fx.overrides, preprocess=fx.preprocess)
    return onnx_path, ckpt


# The cases the tests and the benchmark use: varied scale (power of two and not), channel count and sites.
RESNET_ALL_REDUCE = ("layer1.reduce", "layer2.reduce", "layer3.reduce", "layer4.reduce")
VIT_ALL_NORMS = tuple(f"blocks.{i}.norm{j}" for i in range(4) for j in (1, 2)) + ("norm",)
CASES = {
    # the case: a few channels of every bottleneck's reduction output x 64
    "r50-reduce-x64": OutlierSpec("r50_hybrid_digits", RESNET_ALL_REDUCE, 64.0, 2, 0),
    # other scale, more channels, the stem (through the stem max-pool, two readers) and the 3x3 convs
    "r50-stem-spatial-x20": OutlierSpec("r50_hybrid_digits", ("stem", "layer2.spatial", "layer3.spatial",
                                                              "layer1.reduce"), 20.0, 4, 1),
    # one channel, huge scale, the max-pool block and one avg-pool block only
    "r50-maxpool-avgpool-x256": OutlierSpec("r50_hybrid_digits", ("layer1.reduce", "layer4.reduce"), 256.0, 1, 2),
    # the transformer case: LayerNorm outputs x 64 everywhere
    "vit-norms-x64": OutlierSpec("vit_ti_max_digits", VIT_ALL_NORMS, 64.0, 2, 0),
    # attention/mixer inputs only, more channels, another scale
    "vit-norm1-x48": OutlierSpec("vit_ti_max_digits", tuple(f"blocks.{i}.norm1" for i in range(4)), 48.0, 3, 1),
    # MLP inputs and the head only, one channel x 128
    "vit-norm2-head-x128": OutlierSpec("vit_ti_max_digits", ("blocks.0.norm2", "blocks.2.norm2", "norm"),
                                       128.0, 1, 2),
}
