"""In-graph preprocessing: a wrapper that takes raw uint8 NHWC images and normalizes them itself."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pfdeploy.calibration.preprocess import Preprocess


class Uint8NHWCInput(nn.Module):
    """uint8 (N, H, W, 3) -> cast, layout change, (x / 255 - mean) / std -> the wrapped model.

    The cast comes first because TensorRT takes UINT8 only as a network input converted by Cast
    before any other layer (its Transpose has no UINT8 kernel). `.contiguous()` gives the model a
    plain NCHW tensor: a channels-last view would make the exporter write the head's flatten of
    r50-style models as a strided gather whose batch size is read by a Shape of the raw input.
    The normalization is one multiply-add per element: x * (1 / (255 std)) + (-mean / std). This
    matches `pfdeploy.calibration.preprocess.normalize_uint8` to float32 rounding.
    """

    def __init__(self, model: nn.Module, pre: Preprocess):
        super().__init__()
        self.model = model
        mean = torch.tensor(pre.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        std = torch.tensor(pre.std, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).permute(0, 3, 1, 2).contiguous()
        return self.model(x * self.scale + self.shift)


def wrap_input_format(model: nn.Module, input_format: str, pre: Preprocess) -> nn.Module:
    """The module to export for `input_format` ('float-nchw' is the model itself)."""
    if input_format == "float-nchw":
        return model
    if input_format == "uint8-nhwc":
        return Uint8NHWCInput(model, pre).eval()
    raise ValueError(f"unknown input format {input_format!r}")


def sample_input(input_format: str, batch: int, size: int, seed: int = 0) -> Tensor:
    """A tracing/example input of the right dtype and layout."""
    gen = torch.Generator().manual_seed(seed)
    if input_format == "uint8-nhwc":
        return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen)
    return torch.randn(batch, 3, size, size, generator=gen)
