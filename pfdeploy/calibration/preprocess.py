"""Evaluation preprocessing, shared by calibration, `verify --data`, `predict` and `eval`.

Resize the shorter side to size / crop_pct (256 for 224), center-crop, then either keep uint8 HWC
(for graphs that take raw bytes) or scale to [0, 1] and normalize with the model's mean/std (CHW).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from pfdeploy.errors import PfdeployError

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocess:
    """How images become model input: crop size, resize rule and normalization."""

    size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def resize(self) -> int:
        """Shorter-side length before the center crop (256 for 224 at 0.875)."""
        return int(math.floor(self.size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view, as stored in ONNX metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of `to_dict` (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def preprocess_for(name: str, img_size: int | None = None) -> Preprocess:
    """The Preprocess of a registered model, optionally at another input size."""
    from pfdeploy.models import get_config

    cfg = get_config(name)
    size = img_size or cfg.input_size[-1]
    return Preprocess(size, cfg.crop_pct, cfg.interpolation, tuple(cfg.mean), tuple(cfg.std))


def crop_uint8(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """PIL image -> RGB uint8 array (size, size, 3): resize shorter side, center crop."""
    if pre.interpolation not in RESAMPLE:
        raise PfdeployError(f"unknown interpolation {pre.interpolation!r}; use one of {sorted(RESAMPLE)}")
    image = image.convert("RGB")
    width, height = image.size
    scale = pre.resize / min(width, height)
    new_w, new_h = max(pre.size, round(width * scale)), max(pre.size, round(height * scale))
    image = image.resize((new_w, new_h), RESAMPLE[pre.interpolation])
    left, top = (new_w - pre.size) // 2, (new_h - pre.size) // 2
    return np.asarray(image.crop((left, top, left + pre.size, top + pre.size)), dtype=np.uint8)


def normalize_uint8(batch: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 NHWC (or HWC) -> float32 NCHW (or CHW) normalized with the model's mean/std.

    This is exactly what a `uint8-nhwc` ONNX graph does inside the graph.
    """
    x = batch.astype(np.float32) / 255.0
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess_image(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """PIL image -> normalized float32 CHW array of shape (3, size, size)."""
    return normalize_uint8(crop_uint8(image, pre), pre)
