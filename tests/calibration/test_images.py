"""Image sources: class folders, flat folders, arrays; deterministic sampling; bad files counted."""

from __future__ import annotations

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
