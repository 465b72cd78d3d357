"""Fuzzing the image readers: image files (`predict`, `eval`, calibration) and `.npy`/`.npz` arrays.

Issue 20: predict gave PIL's DecompressionBombError and hung on a FIFO; issue 19: a 16-bit PNG saturated.
Every input must decode into 8-bit RGB that preprocessing takes, or be one PfdeployError line.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from fuzz.harness import check_reader, fuzz_tests, mutated_bytes
from pfdeploy.calibration.images import ImageSource, load_labeled, read_image
from pfdeploy.calibration.preprocess import Preprocess, crop_uint8

PRE = Preprocess(size=8, crop_pct=0.875)
RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


SEEDS = {
    "png": _encoded(Image.fromarray(PIXELS), "PNG"),
    "png16": _encoded(Image.fromarray(PIXELS[..., 0].astype(np.uint16) * 257), "PNG"),
    "jpeg": _encoded(Image.fromarray(PIXELS), "JPEG", quality=90),
    "gif": _encoded(Image.fromarray(PIXELS).convert("P"), "GIF"),
    "bmp": _encoded(Image.fromarray(PIXELS), "BMP"),
    "tiff-float": _encoded(Image.fromarray(PIXELS[..., 0].astype(np.float32) / 255, "F"), "TIFF"),
    "webp": _encoded(Image.fromarray(PIXELS), "WEBP"),
    "ppm": _encoded(Image.fromarray(PIXELS), "PPM"),
}


def _rgb8(image) -> None:
    assert image.mode == "RGB" and image.width * image.height >= 1
    crop = crop_uint8(image, PRE)
    assert crop.shape == (8, 8, 3) and crop.dtype == np.uint8


def check_image(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        path = folder / "x.png"
        path.write_bytes(data)
        check_reader("image", lambda: read_image(path), folder, _rgb8)


IMAGES = st.one_of(*(mutated_bytes(seed) for seed in SEEDS.values()))
test_fuzz_images, test_fuzz_images_long = fuzz_tests("images", IMAGES, check_image)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


ARRAY_SEEDS = {
    ".npy": _npy(RNG.integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)),
    ".npz": _npz(images=RNG.integers(0, 256, (3, 6, 5), dtype=np.uint8), labels=np.array([0, 2, 1])),
}


@st.composite
def odd_arrays(draw) -> tuple[str, bytes]:
    """Arrays of odd dtypes, shapes and values (and labels), saved properly: the readers' checks, not numpy's."""
    dtype = draw(st.sampled_from(["uint8", "float32", "float64", "int16", "bool", "complex64", "U3", "float16"]))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=5)))
    fill = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, float("nan"), float("inf")]))
    array = np.full(shape, fill if dtype != "U3" else "a").astype(dtype) if dtype != "uint8" else \
        RNG.integers(0, 256, shape, dtype=np.uint8)
    if draw(st.booleans()):
        return ".npy", _npy(array)
    labels = draw(st.sampled_from([None, np.array([0, 1, 2]), np.array([0.5]), np.array([-1, 0, 1]),
                                   np.array([[0], [1], [2]]), np.array(["a", "b", "c"])]))
    return ".npz", _npz(images=array) if labels is None else _npz(images=array, labels=labels)


def _loaded(result) -> None:
    batch, labels, stats = result
    assert batch.dtype == np.float32 and batch.shape[1:] == (3, 8, 8) and len(labels) == len(batch) == stats.loaded


def check_array(case: tuple[str, bytes]) -> None:
    suffix, data = case
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        path = folder / f"x{suffix}"
        path.write_bytes(data)
        check_reader("arrays", lambda: load_labeled(path, PRE, progress=False), folder, _loaded)


ARRAYS = st.one_of(*(mutated_bytes(seed).map(lambda d, s=suffix: (s, d)) for suffix, seed in ARRAY_SEEDS.items()),
                   odd_arrays())
test_fuzz_arrays, test_fuzz_arrays_long = fuzz_tests("arrays", ARRAYS, check_array)


def test_the_seeds_decode(tmp_path):
    for fmt, seed in SEEDS.items():
        path = tmp_path / f"x.{fmt}"
        path.write_bytes(seed)
        _rgb8(read_image(path))
    for suffix, seed in ARRAY_SEEDS.items():
        path = tmp_path / f"x{suffix}"
        path.write_bytes(seed)
        assert len(ImageSource(path).items) == 3
        _loaded(load_labeled(path, PRE, progress=False))
