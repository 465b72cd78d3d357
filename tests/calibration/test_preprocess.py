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
