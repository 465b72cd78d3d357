"""Evaluation preprocessing, shared by calibration, `verify --data`, `predict` and `eval`.

Resize the shorter side to size / crop_pct (256 for 224), center-crop, then either keep uint8 HWC
(for graphs that take raw bytes) or scale to [0, 1] and normalize with the model's mean/std (CHW).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from pfdeploy.errors import PfdeployError, shown
from pfdeploy.limits import MAX_IMG_SIZE

RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


FIELDS = ("size", "crop_pct", "interpolation", "mean", "std")


def _is_number(value: Any) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON allows 10**400)
        return False


def _channels_problem(name: str, values: Any) -> str | None:
    if not isinstance(values, (tuple, list)) or len(values) != 3 or not all(map(_is_number, values)):
        return f"{name} must be three finite numbers, one per RGB channel, got {shown(values)}"
    if name == "std" and any(v <= 0 for v in values):
        return f"std must be positive (normalization divides by it), got {list(values)}"
    return None


def preprocess_problem(pre: Preprocess) -> str | None:
    """What is wrong with `pre` (None if nothing): the key, the value and what it must be."""
    if not isinstance(pre.size, numbers.Integral) or isinstance(pre.size, bool) or not 1 <= pre.size <= MAX_IMG_SIZE:
        return f"size must be an integer >= 1 and <= {MAX_IMG_SIZE} (the model's input size), got {shown(pre.size)}"
    if not _is_number(pre.crop_pct) or not 0 < pre.crop_pct <= 1:
        return f"crop_pct must be in (0, 1] (0.875: ImageNet's center crop, 1.0: no crop), got {shown(pre.crop_pct)}"
    if pre.size / pre.crop_pct > MAX_IMG_SIZE:
        return (f"size / crop_pct (the resize before the crop) must be at most {MAX_IMG_SIZE}, got "
                f"{pre.size / pre.crop_pct:g}")
    if not isinstance(pre.interpolation, str) or pre.interpolation not in RESAMPLE:
        return f"interpolation must be one of {', '.join(sorted(RESAMPLE))}, got {shown(pre.interpolation)}"
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
            raise PfdeployError(f"bad preprocess: unknown key(s) {', '.join(repr(k[:40]) for k in unknown[:5])}; "
                                f"the keys are {', '.join(FIELDS)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def preprocess_from_option(value: str) -> Preprocess:
    """The Preprocess of a `--preprocess` value: a JSON object, or the path of a JSON file holding one.

    A FIFO is refused before it is opened; text that is not UTF-8, nests deeper than MAX_JSON_DEPTH or is
    not a Preprocess object is one PfdeployError line."""
    from pathlib import Path

    from pfdeploy.limits import json_from_text, read_json_file

    fix = "give a JSON object with size, crop_pct, interpolation, mean, std (or a file holding one)"
    try:
        is_path = not value.lstrip().startswith(("{", "[", '"')) and (Path(value).exists() or Path(value).is_symlink())
    except (OSError, ValueError):  # a name too long for the file system, a NUL: JSON text, not a path
        is_path = False
    data = read_json_file(value, "--preprocess file", fix) if is_path else json_from_text(value, "--preprocess", fix)
    try:
        return Preprocess.from_dict(data)
    except PfdeployError as exc:
        raise PfdeployError(f"--preprocess: {exc}") from None


def metadata_json(meta: dict[str, str], key: str, source: str = "artifact", default: Any = None) -> Any:
    """The JSON value of ONNX metadata `pfdeploy.<key>` (`default` when absent), or a one-line
    PfdeployError naming the key when it is not valid JSON."""
    from pfdeploy.limits import json_from_text

    raw = meta.get(f"pfdeploy.{key}")
    if raw is None:
        return default
    return json_from_text(raw, f"{source}: metadata pfdeploy.{key}", "the file was edited or damaged: re-export it "
                          "with `pfdeploy export`")


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


#: Pillow modes of 16-bit grayscale images (PNG, TIFF), scaled 0..65535 -> 0..255 by `rgb8_from_image`.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def rgb8_from_image(image: Image.Image, ref: str = "image") -> Image.Image:
    """The 8-bit RGB image the models take, from a decoded image of any mode.

    16-bit grayscale (`I;16`) and 32-bit integer (`I`) images are scaled from 0..65535 to 0..255, float
    images (`F`) from 0..1 to 0..255; Pillow's own `convert("RGB")` would saturate every non-zero 16-bit
    pixel (a confident wrong class). An `I` image beyond 0..65535 or an `F` image outside [0, 1] (or with
    NaN) has no scale that is not a guess: one PfdeployError naming `ref`. Other modes (palette, grey,
    CMYK, with alpha) convert with Pillow.
    """
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        values = np.asarray(image)
        if image.mode == "F":
            if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise PfdeployError(f"{ref}: a float image with values outside [0, 1]; save it as an 8-bit image")
            scaled = values.astype(np.float64) * 255.0
        else:
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise PfdeployError(f"{ref}: a 32-bit integer image with values outside 0..65535; save it as an "
                                    "8-bit or 16-bit image")
            scaled = values.astype(np.float64) / 257.0  # 65535 -> 255
        image = Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:  # a mode Pillow cannot convert
        raise PfdeployError(f"{ref}: cannot convert a {image.mode} image to RGB ({exc}); save it as 8-bit "
                            "RGB") from None


def crop_uint8(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """PIL image -> RGB uint8 array (size, size, 3): resize shorter side, center crop.

    An image so elongated that resizing all of it would pass MAX_IMAGE_PIXELS is resized through the crop's
    box only (the same sampling positions), so no image needs more memory than the pixel limit allows."""
    from pfdeploy.limits import MAX_IMAGE_PIXELS

    if pre.interpolation not in RESAMPLE:
        raise PfdeployError(f"unknown interpolation {pre.interpolation!r}; use one of {sorted(RESAMPLE)}")
    image = rgb8_from_image(image)
    width, height = image.size
    scale = pre.resize / min(width, height)
    new_w, new_h = max(pre.size, round(width * scale)), max(pre.size, round(height * scale))
    left, top = (new_w - pre.size) // 2, (new_h - pre.size) // 2
    if new_w * new_h > MAX_IMAGE_PIXELS:
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + pre.size) * sx, (top + pre.size) * sy)
        return np.asarray(image.resize((pre.size, pre.size), RESAMPLE[pre.interpolation], box=box), dtype=np.uint8)
    image = image.resize((new_w, new_h), RESAMPLE[pre.interpolation])
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
