"""The model zoo as data: one `ModelConfig` per registered name, and `create_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pfdeploy.errors import PfdeployError
from pfdeploy.limits import MAX_MODEL_BYTES
from pfdeploy.models import pit, resnet, vit
from pfdeploy.models.pit import PFPiT
from pfdeploy.models.resnet import PFResNet
from pfdeploy.models.vit import PFViT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FAMILIES: dict[str, Callable[..., nn.Module]] = {"resnet": PFResNet, "vit": PFViT, "pit": PFPiT}
#: Each family's file, holding its `config_problem(args)` and `largest_activation(args)`.
FAMILY_MODULES: dict[str, ModuleType] = {"resnet": resnet, "vit": vit, "pit": pit}


@dataclass(frozen=True)
class ModelConfig:
    """Everything export, calibration and evaluation need to know about a registered model.

    `pf_layers` counts the parameter-free spatial ops (max/avg-pool spatial ops of the ResNets,
    max-pool token mixers of the transformers). `layout` names the fixture file holding the
    published checkpoint's state_dict layout.
    """

    name: str
    family: str
    kwargs: dict[str, Any]
    layout: str
    pf_layers: int
    paper_name: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    num_classes: int = 1000
    aliases: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view of the config."""
        return asdict(self)


def _resnet(name, kind, layout, pf, paper, aliases) -> ModelConfig:
    return ModelConfig(name, "resnet", {"kind": kind}, layout, pf, paper, aliases=aliases)


def _vit(name, dim, heads, pooling, layout, pf, paper) -> ModelConfig:
    kwargs = {"embed_dim": dim, "depth": 12, "num_heads": heads, "pooling": pooling}
    return ModelConfig(name, "vit", kwargs, layout, pf, paper, interpolation="bicubic")


def _pit(name, base_dim, depth, heads, patch, stride, layout, paper) -> ModelConfig:
    kwargs = {"base_dim": base_dim, "depth": depth, "heads": heads, "patch_size": patch, "stride": stride}
    pf = sum(d // 2 for d in depth)
    return ModelConfig(name, "pit", kwargs, layout, pf, paper, interpolation="bicubic")


MODELS: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in (
        _resnet("r50", "conv", "resnet50", 0, "R50", ("resnet50",)),
        _resnet("r50_max", "max", "resnet50_max", 16, "R50-max", ("resnet50_max",)),
        _resnet("r50_hybrid", "hybrid", "resnet50_hybrid", 16, "R50-hybrid", ("resnet50_hybrid",)),
        _vit("vit_ti_max", 192, 3, True, "vit_ti_max", 6, "ViT-Ti-max"),
        _vit("vit_s_max", 384, 6, True, "vit_s_max", 6, "ViT-S-max"),
        _vit("vit_b_max", 768, 12, True, "vit_b_max", 6, "ViT-B-max"),
        _vit("vit_s", 384, 6, False, "vit_s_attn", 0, "ViT-S"),
        _pit("pit_ti_max", 32, (2, 6, 4), (2, 4, 8), 16, 8, "pit_ti_max", "PiT-Ti-max"),
        _pit("pit_s_max", 48, (2, 6, 4), (3, 6, 12), 16, 8, "pit_s_max", "PiT-S-max"),
        _pit("pit_b_max", 64, (3, 6, 4), (4, 8, 16), 14, 7, "pit_b_max", "PiT-B-max"),
    )
}
ALIASES: dict[str, str] = {alias: cfg.name for cfg in MODELS.values() for alias in cfg.aliases}


def list_models() -> list[str]:
    """Registered model names, in registry order."""
    return list(MODELS)


def resolve_name(name: str) -> str:
    """Canonical registry name for `name` or an alias; unknown names raise PfdeployError."""
    if name in MODELS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise PfdeployError(
        f"unknown model {name!r}; choose one of: {', '.join(list_models())} (see `pfdeploy list`)"
    )


def get_config(name: str) -> ModelConfig:
    """The ModelConfig of a registered name or alias."""
    return MODELS[resolve_name(name)]


def model_args(name: str, num_classes: int = 1000, **overrides: Any) -> dict[str, Any]:
    """The checked constructor arguments of a registered model with `overrides`, before anything is built.

    Unknown argument names, values of the wrong type or range (the family's `config_problem`: positive
    sizes, heads dividing the width, patch and grid sizes, the number of stages) and a config whose memory
    estimate (`model_bytes`) is over MAX_MODEL_BYTES are each one PfdeployError line naming the field.
    """
    cfg = get_config(name)
    family = FAMILIES[cfg.family]
    try:
        bound = inspect.signature(family).bind(**{**cfg.kwargs, **overrides, "num_classes": num_classes})
    except TypeError as exc:
        raise PfdeployError(f"bad override for {cfg.name}: {exc}; check the argument names") from None
    bound.apply_defaults()
    args = dict(bound.arguments)
    problem = FAMILY_MODULES[cfg.family].config_problem(args)
    if problem:
        raise PfdeployError(f"bad model config for {cfg.name}: {problem}; change that value (--override, "
                            "--img-size or --num-classes)")
    estimate = model_bytes(cfg.family, args)
    if estimate > MAX_MODEL_BYTES:
        raise PfdeployError(f"model config for {cfg.name} needs about {estimate / 2**30:.1f} GiB (float32 parameters "
                            f"plus one image's largest activation), over pfdeploy's limit of "
                            f"{MAX_MODEL_BYTES / 2**30:.0f} GiB; use smaller widths, fewer classes or a smaller "
                            "img_size")
    return args


def model_bytes(family: str, args: dict[str, Any]) -> int:
    """Memory estimate of a checked config: float32 parameters, counted on the meta device (nothing is
    allocated), plus the family's largest activation of one image."""
    with torch.device("meta"):
        parameters = sum(p.numel() for p in FAMILIES[family](**args).parameters())
    return 4 * (parameters + FAMILY_MODULES[family].largest_activation(args))


def create_model(name: str, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """Build a registered model in eval mode, with random weights.

    `overrides` replace the family's constructor arguments (e.g. `img_size=256`, or
    `layers=(1, 1, 1, 1), base_width=16` for a narrow ResNet); they are checked first (`model_args`).
    The returned module carries `pretrained_cfg` (the ModelConfig) and `overrides`.
    """
    cfg = get_config(name)
    model = FAMILIES[cfg.family](**model_args(cfg.name, num_classes, **overrides))
    model.pretrained_cfg = cfg
    model.overrides = dict(overrides)
    return model.eval()
