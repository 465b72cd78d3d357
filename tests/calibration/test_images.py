"""Image sources: class folders, flat folders, arrays; deterministic sampling; bad files counted."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfdeploy.calibration.images import ImageSource, iter_images, load_batch, load_labeled
from pfdeploy.calibration.preprocess import Preprocess, preprocess_image
from pfdeploy.errors import PfdeployError

DIGITS = Path(__file__).resolve().parents[1] / "fixtures" / "digits"
PRE = Preprocess(size=16, crop_pct=1.0)


def _write(folder: Path, count: int, value_of=lambda i: i * 10, suffix=".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}{suffix}"
        Image.new("RGB", (20, 24), (value_of(i), 0, 0)).save(path)
        paths.append(path)
    return paths


def test_class_folder_labels_follow_sorted_class_names():
    x, y, stats = load_labeled(DIGITS / "val", Preprocess(size=32, crop_pct=1.0))
    assert stats.kind == "class-folder" and stats.classes == [str(c) for c in range(10)]
    assert x.shape == (stats.found, 3, 32, 32) and x.dtype == np.float32
    assert set(y.tolist()) == set(range(10)) and stats.loaded == len(y) == stats.found
    # label k comes from folder k: the first image of each class sits in that folder
    first = sorted((DIGITS / "val" / "7").iterdir())[0]
    index = int(np.flatnonzero(y == 7)[0])
    np.testing.assert_array_equal(x[index], preprocess_image(Image.open(first), Preprocess(32, 1.0)))


def test_flat_folder_in_sorted_order(tmp_path):
    _write(tmp_path, 5)
    batch = load_batch(tmp_path, PRE, layout="nhwc")
    assert batch.shape == (5, 16, 16, 3) and batch.dtype == np.uint8
    assert batch[:, 8, 8, 0].tolist() == [0, 10, 20, 30, 40]


def test_sampling_is_deterministic_and_seeded(tmp_path):
    _write(tmp_path, 40, value_of=lambda i: i * 6)
    a = load_batch(tmp_path, PRE, num_images=10, seed=3, layout="nhwc")[:, 0, 0, 0]
    b = load_batch(tmp_path, PRE, num_images=10, seed=3, layout="nhwc")[:, 0, 0, 0]
    c = load_batch(tmp_path, PRE, num_images=10, seed=4, layout="nhwc")[:, 0, 0, 0]
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist() and len(set(a.tolist())) == 10


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_array_sources(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(6) % 3
    path = tmp_path / f"calib{suffix}"
    if suffix == ".npy":
        np.save(path, images)
    else:
        np.savez(path, images=images, labels=labels)
    batch, got_labels, stats = load_labeled(path, PRE, layout="nhwc")
    assert stats.kind == "array"
    np.testing.assert_array_equal(batch, images)  # 16x16 at crop 1.0 is the identity
    assert got_labels.tolist() == (labels.tolist() if suffix == ".npz" else [-1] * 6)


def test_nchw_array_and_float_array_are_accepted(tmp_path):
    images = np.random.default_rng(1).random((3, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "a.npy", images)
    batch = load_batch(tmp_path / "a.npy", PRE, layout="nhwc")
    np.testing.assert_array_equal(batch, np.round(np.moveaxis(images, 1, -1) * 255).astype(np.uint8))


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    _write(tmp_path, 4)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image: ignored")
    batch, _, stats = load_labeled(tmp_path, PRE)
    assert len(batch) == 4 and stats.found == 6 and stats.skipped == 2 and stats.loaded == 4
    assert "2 unreadable skipped" in stats.summary()


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    _write(tmp_path, 2)
    Image.new("L", (300, 300)).save(tmp_path / "zz_huge.png")  # tiny file, 90,000 pixels
    images, stats = iter_images(tmp_path, max_pixels=50_000)
    assert len(list(images)) == 2 and stats.refused == 1 and "decompression bomb" in stats.examples[0]


def test_num_images_tops_up_past_unreadable_files(tmp_path):
    _write(tmp_path, 6)
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"junk")
    src = ImageSource(tmp_path)
    assert len(list(src.iter_labeled(num_images=5, seed=0))) == 5


@pytest.mark.parametrize("make, match", [
    (lambda p: p.mkdir(), "no images in"),
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("x"), "is not an image source"),
    (lambda p: (p.mkdir(), *[(p / f"{i}.png").write_bytes(b"x") for i in range(2)]), "none of the 2 images"),
])
def test_bad_sources_fail_with_one_clear_line(tmp_path, make, match):
    path = tmp_path / "src"
    make(path)
    with pytest.raises(PfdeployError, match=match) as info:
        load_batch(path, PRE)
    assert "\n" not in str(info.value)


def test_bad_arrays_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 5), np.uint8))
    with pytest.raises(PfdeployError, match="expected images shaped"):
        load_batch(tmp_path / "a.npy", PRE)
    np.save(tmp_path / "b.npy", np.full((2, 8, 8, 3), 7.0))
    with pytest.raises(PfdeployError, match="uint8 images or floats in"):
        load_batch(tmp_path / "b.npy", PRE)
    (tmp_path / "c.npy").write_bytes(b"garbage")
    with pytest.raises(PfdeployError, match="not a readable"):
        load_batch(tmp_path / "c.npy", PRE)


def test_a_link_back_to_the_parent_is_not_a_class(tmp_path, caplog):
    """`self -> .` (and any link into or above the source) is no class: eval would score it 100%."""
    _write(tmp_path / "cat", 2)
    _write(tmp_path / "dog", 3)
    (tmp_path / "self").symlink_to(".")
    (tmp_path / "up").symlink_to("..")
    (tmp_path / "dog" / "loop").symlink_to("..")  # a loop inside a class
    (tmp_path / "dog" / "cats").symlink_to("../cat")  # another class's images under this one
    with caplog.at_level("WARNING"):
        _, labels, stats = load_labeled(tmp_path, PRE)
    assert stats.classes == ["cat", "dog"] and sorted(labels.tolist()) == [0, 0, 1, 1, 1]
    assert stats.found == 5 and "link back into the image source" in caplog.text


def test_class_folders_linked_from_elsewhere_still_count(tmp_path):
    elsewhere = tmp_path / "store"
    _write(elsewhere / "cat", 2)
    (elsewhere / "cat" / "again").symlink_to(".")  # a loop outside the source: followed once, no hang
    root = tmp_path / "data"
    _write(root / "dog", 1)
    (root / "cat").symlink_to(elsewhere / "cat")
    _, labels, stats = load_labeled(root, PRE)
    assert stats.classes == ["cat", "dog"] and labels.tolist() == [0, 0, 1]


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height 8-bit grey pixels and holds none: what a decompression bomb
    looks like to a reader that trusts the header (written in microseconds)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def _digit() -> np.ndarray:
    return np.asarray(Image.open(sorted((DIGITS / "val" / "4").iterdir())[0]).convert("L"))


def test_16_bit_and_float_images_are_scaled_not_saturated(tmp_path):
    """convert("RGB") saturated every non-zero I;16 pixel (issue 19, item 6)."""
    from pfdeploy.calibration.images import read_image

    grey = _digit()
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # 16-bit PNG of the same picture
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    Image.fromarray(grey.astype(np.float32) / 255, "F").save(tmp_path / "f.tiff")
    Image.fromarray(grey.astype(np.int32) * 257, "I").save(tmp_path / "i.tiff")
    for name in ("g16.png", "f.tiff", "i.tiff"):
        rgb = np.asarray(read_image(tmp_path / name))
        assert rgb.dtype == np.uint8 and rgb.shape == (*grey.shape, 3), name
        np.testing.assert_array_equal(rgb[..., 0], grey, err_msg=name)


@pytest.mark.parametrize("values, mode, words", [
    (np.full((8, 8), 1.5, np.float32), "F", "float image with values outside [0, 1]"),
    (np.full((8, 8), np.nan, np.float32), "F", "float image with values outside [0, 1]"),
    (np.full((8, 8), 70000, np.int32), "I", "values outside 0..65535"),
    (np.full((8, 8), -1, np.int32), "I", "values outside 0..65535"),
])
def test_images_without_an_8_bit_scale_are_refused(tmp_path, values, mode, words):
    from pfdeploy.calibration.images import read_image

    Image.fromarray(values, mode).save(tmp_path / "odd.tiff")
    with pytest.raises(PfdeployError, match=re.escape(words)):
        read_image(tmp_path / "odd.tiff")
    _write(tmp_path, 2)  # the folder holds the odd image and two good ones: calibration counts it as refused
    images, stats = iter_images(tmp_path)
    assert len(list(images)) == 2 and stats.refused == 1 and words in stats.examples[0]


def test_calibration_sees_a_16_bit_image_as_its_8_bit_original(tmp_path):
    grey = _digit()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(grey).save(tmp_path / "a" / "x.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "b" / "x.png")
    pre = Preprocess(size=32, crop_pct=1.0)
    np.testing.assert_array_equal(load_batch(tmp_path / "a", pre), load_batch(tmp_path / "b", pre))


def test_one_pixel_limit_for_every_reader(tmp_path):
    """A 72-Mpixel image was accepted by predict and refused by eval and calibration; a 210-Mpixel one gave
    PIL's DecompressionBombError traceback in predict (issue 20)."""
    from pfdeploy.calibration.images import read_image
    from pfdeploy.limits import MAX_IMAGE_PIXELS
    from pfdeploy.runtime.predict import open_image

    assert MAX_IMAGE_PIXELS == 64_000_000
    for width, height in ((9000, 8000), (15000, 14000)):  # 72 and 210 Mpixel
        path = png_header_only(tmp_path / f"big{width}.png", width, height)
        for reader in (read_image, open_image):
            with pytest.raises(PfdeployError, match="decompression bomb") as err:
                reader(path)
            assert "\n" not in str(err.value)
    images, stats = iter_images(tmp_path)
    assert list(images) == [] and stats.refused == 2


def test_an_elongated_image_is_cropped_without_resizing_all_of_it(tmp_path):
    """1 x 60000 pixels is under the pixel limit, but resizing its short side to 256 makes 15 Gpixel."""
    from pfdeploy.calibration.preprocess import crop_uint8

    thin = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), 240)[None, :60000])
    crop = crop_uint8(thin, Preprocess(size=224))
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_image_or_array_is_refused_without_hanging(tmp_path):
    import os

    from fuzz.harness import no_hang

    from pfdeploy.runtime.predict import open_image

    os.mkfifo(tmp_path / "x.png")
    os.mkfifo(tmp_path / "x.npy")
    with no_hang(20):  # predict hung on a FIFO image until killed (issue 20)
        with pytest.raises(PfdeployError, match="is a FIFO, not a regular file"):
            open_image(tmp_path / "x.png")
        with pytest.raises(PfdeployError, match="is a FIFO, not a regular file"):
            ImageSource(tmp_path / "x.npy")


def _npy_with_header(path: Path, shape: tuple, dtype: str = "|u1", payload: bytes = b"") -> Path:
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1,), np.uint8))
    header.update(shape=shape, descr=dtype)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(payload)
    return path


@pytest.mark.parametrize("make, words", [
    (lambda p: _npy_with_header(p / "x.npy", (100_000, 1000, 1000, 3)), "over pfdeploy's limit"),
    (lambda p: _npy_with_header(p / "x.npy", (4, 8, 8, 3), payload=b"\x00" * 10), "truncated or damaged"),
    (lambda p: np.save(p / "x.npy", np.full((2, 8, 8), np.nan, np.float32)) or p / "x.npy", "outside [0, 1] (or NaN)"),
    (lambda p: np.save(p / "x.npy", np.zeros((2, 0, 8), np.uint8)) or p / "x.npy", "each must have 1.."),
    (lambda p: np.savez(p / "x.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0.5, 1.0]))
     or p / "x.npz", "labels must be 2 integer class indices"),
    (lambda p: np.savez(p / "x.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.array([[0, 1]]))
     or p / "x.npz", "labels must be 2 integer class indices"),
    (lambda p: np.savez(p / "x.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, -3]))
     or p / "x.npz", "labels must be 2 integer class indices"),
    (lambda p: np.save(p / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True) or p / "x.npy",
     "not numbers"),
])
def test_hostile_arrays_are_one_line_before_numpy_allocates(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(PfdeployError, match=re.escape(words)) as err:
        ImageSource(path)
    assert "\n" not in str(err.value)
