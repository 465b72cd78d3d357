"""Evaluation preprocessing, shared by calibration, `verify --data`, `predict` and `eval`.

Resize the shorter side to size / crop_pct (256 for 224), center-crop, then either keep uint8 HWC
(for graphs that take raw bytes) or scale to [0, 1] and normalize with the model's mean/std (CHW).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from pfdeploy.errors import PfdeployError

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


FIELDS = ("size", "crop_pct", "interpolation", "mean", "std")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _channels_problem(name: str, values: Any) -> str | None:
    if not isinstance(values, (tuple, list)) or len(values) != 3 or not all(map(_is_number, values)):
        return f"{name} must be three finite numbers, one per RGB channel, got {values!r}"
    if name == "std" and any(v <= 0 for v in values):
        return f"std must be positive (normalization divides by it), got {list(values)}"
    return None


def preprocess_problem(pre: Preprocess) -> str | None:
    """What is wrong with `pre` (None if nothing): the key, the value and what it must be."""
    if not isinstance(pre.size, numbers.Integral) or isinstance(pre.size, bool) or pre.size < 1:
        return f"size must be an integer >= 1 (the model's input size), got {pre.size!r}"
    if not _is_number(pre.crop_pct) or not 0 < pre.crop_pct <= 1:
        return f"crop_pct must be in (0, 1] (0.875: ImageNet's center crop, 1.0: no crop), got {pre.crop_pct!r}"
    if pre.interpolation not in RESAMPLE:
        return f"interpolation must be one of {', '.join(sorted(RESAMPLE))}, got {pre.interpolation!r}"
    return _channels_problem("mean", pre.mean) or _channels_problem("std", pre.std)


@dataclass(frozen=True)
class Preprocess:
    """How images become model input: crop size, resize rule and normalization.

    Checked when made: size >= 1, crop_pct in (0, 1], a known interpolation, three finite mean
    values and three positive std values (a PfdeployError names the key otherwise).
    """

    size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        problem = preprocess_problem(self)
        if problem:
            raise PfdeployError(f"bad preprocess: {problem}")

    @property
    def resize(self) -> int:
        """Shorter-side length before the center crop (256 for 224 at 0.875)."""
        return int(math.floor(self.size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view, as stored in ONNX metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of `to_dict` (lists become tuples); a missing key takes the default, an unknown one raises."""
        if not isinstance(data, dict):
            raise PfdeployError(f"bad preprocess: expected a JSON object with {', '.join(FIELDS)}, "
                                f"got {type(data).__name__}")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise PfdeployError(f"bad preprocess: unknown key(s) {', '.join(map(repr, unknown))}; "
                                f"the keys are {', '.join(FIELDS)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def metadata_json(meta: dict[str, str], key: str, source: str = "artifact", default: Any = None) -> Any:
    """The JSON value of ONNX metadata `pfdeploy.<key>` (`default` when absent), or a one-line
    PfdeployError naming the key when it is not valid JSON."""
    raw = meta.get(f"pfdeploy.{key}")
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise PfdeployError(f"{source}: metadata pfdeploy.{key} is not valid JSON ({exc}); the file was edited "
                            "or damaged: re-export it with `pfdeploy export`") from None


def preprocess_from_metadata(meta: dict[str, str], source: str = "artifact") -> Preprocess | None:
    """The Preprocess recorded in ONNX metadata `pfdeploy.preprocess` (None when absent), checked: bad
    JSON, a std of 0, one mean value or an unknown interpolation is one line naming the key and the fix."""
    data = metadata_json(meta, "preprocess", source)
    if data is None:
        return None
    try:
        return Preprocess.from_dict(data)
    except PfdeployError as exc:
        raise PfdeployError(f"{source}: metadata pfdeploy.preprocess: {exc}; re-export it with `pfdeploy export`, "
                            "or give the right preprocessing (--preprocess JSON)") from None


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
