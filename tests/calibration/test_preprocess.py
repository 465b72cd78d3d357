"""Preprocessing follows the model config: resize shorter side, center crop, normalize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pfdeploy.calibration.preprocess import (
    Preprocess,
    crop_uint8,
    normalize_uint8,
    preprocess_for,
    preprocess_image,
)
from pfdeploy.models import list_models


@pytest.mark.parametrize("name", list_models())
def test_preprocess_for_every_model(name):
    pre = preprocess_for(name)
    assert pre.size == 224 and pre.resize == 256
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    out = preprocess_image(image, pre)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32


def test_center_crop_of_a_known_image():
    # A 512x256 image whose left and right quarters are black and middle is white: the shorter
    # side becomes 256 (no change), the 224 crop lies in the middle 256 columns -> all white.
    pixels = np.zeros((256, 512, 3), np.uint8)
    pixels[:, 128:384] = 255
    crop = crop_uint8(Image.fromarray(pixels), Preprocess())
    assert crop.shape == (224, 224, 3) and crop.min() == 255


def test_normalize_matches_formula():
    pre = Preprocess()
    pixel = np.full((1, 1, 3), 128, np.uint8)
    got = normalize_uint8(pixel, pre)[:, 0, 0]
    want = (128 / 255 - np.array(pre.mean)) / np.array(pre.std)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_round_trip_through_dict():
    pre = preprocess_for("vit_s_max")
    assert Preprocess.from_dict(pre.to_dict()) == pre and pre.interpolation == "bicubic"


@pytest.mark.parametrize("changes, message", [
    ({"std": (0.0, 0.2, 0.2)}, "std must be positive"),
    ({"std": (0.2, 0.2)}, "std must be three finite numbers"),
    ({"mean": (0.5,)}, "mean must be three finite numbers"),
    ({"mean": (float("nan"), 0.5, 0.5)}, "mean must be three finite numbers"),
    ({"crop_pct": 0.0}, "crop_pct must be in (0, 1]"),
    ({"crop_pct": 1.5}, "crop_pct must be in (0, 1]"),
    ({"size": 0}, "size must be an integer >= 1"),
    ({"size": 2.5}, "size must be an integer >= 1"),
    ({"interpolation": "lanczos"}, "interpolation must be one of bicubic, bilinear, nearest"),
])
def test_bad_preprocess_is_refused_naming_the_key(changes, message):
    from pfdeploy.errors import PfdeployError

    with pytest.raises(PfdeployError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Preprocess(**changes)
    with pytest.raises(PfdeployError, match="bad preprocess"):
        Preprocess.from_dict({**Preprocess().to_dict(), **{k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in changes.items()}})


def test_from_dict_refuses_what_is_not_a_preprocess():
    from pfdeploy.errors import PfdeployError

    with pytest.raises(PfdeployError, match="unknown key"):
        Preprocess.from_dict({"size": 8, "sdt": [1, 1, 1]})
    with pytest.raises(PfdeployError, match="expected a JSON object"):
        Preprocess.from_dict([8, 1.0])
    assert Preprocess.from_dict({"size": 8, "mean": [0.5, 0.5, 0.5]}).mean == (0.5, 0.5, 0.5)
