"""Image sources for calibration, `verify --data` and evaluation.

A source is an ImageNet-style class folder (`DIR/<class>/*.jpg`, labels from the sorted class
names), a flat folder of images, or an `.npy`/`.npz` array of images (N, H, W[, 3]) uint8. Images
are decoded with Pillow into 8-bit RGB (16-bit and float images scaled, see
`preprocess.rgb8_from_image`); unreadable files are skipped and counted, never fatal; images larger
than `max_pixels` (pfdeploy.limits.MAX_IMAGE_PIXELS: decompression bombs) are refused before they are
decoded. An array's header is checked (shape, dtype, bytes stored, MAX_ARRAY_BYTES) before numpy reads
it. Order and sampling are deterministic: all images in sorted order, or `num_images` of them drawn by
`seed`.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pfdeploy.calibration.preprocess import Preprocess, crop_uint8, normalize_uint8, rgb8_from_image
from pfdeploy.errors import PfdeployError
from pfdeploy.limits import MAX_ARRAY_BYTES, MAX_IMAGE_PIXELS, require_regular_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
ARRAY_SUFFIXES = {".npy", ".npz"}
ARRAY_KEYS = ("images", "x", "data", "arr_0")
LABEL_KEYS = ("labels", "y", "targets")
ARRAY_FIX = "save the images with numpy.save / numpy.savez as uint8 (N, H, W[, 3]) (labels: integers >= 0)"


class ImageProblem(PfdeployError):
    """An image file that cannot be used: `refused` (too large, a 16-bit or float image without a scale)
    or unreadable (not an image, truncated, damaged)."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass
class ImageStats:
    """What a source held and what became of it (updated while images are read)."""

    source: str
    kind: str  # "class-folder" | "flat-folder" | "array"
    found: int = 0
    selected: int = 0
    loaded: int = 0
    skipped: int = 0  # unreadable
    refused: int = 0  # over max_pixels (decompression bombs)
    classes: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)  # first few skipped/refused, with the reason

    def note(self, what: str, ref: str, reason: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        if len(self.examples) < 5:
            self.examples.append(f"{ref}: {reason}")
        log.warning("%s %s (%s)", what, ref, reason)

    def summary(self) -> str:
        """One line: 'loaded 512 of 1000 images from DIR (2 unreadable skipped, 0 refused)'."""
        return (f"loaded {self.loaded} of {self.found} images from {self.source} "
                f"({self.skipped} unreadable skipped, {self.refused} refused as too large)")


@dataclass(frozen=True)
class _Item:
    ref: Path | int  # a file, or an index into the array
    label: int  # -1 when the source has no labels


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _loops_back(link: Path, root: Path) -> bool:
    """True for a directory symlink that resolves to `root`, inside it, or above it (a loop or a
    second view of images already in the source)."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling link or a symlink loop
        return True
    return target == root or target.is_relative_to(root) or root.is_relative_to(target)


def _images_under(folder: Path, root: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted; directory symlinks are followed only when they
    lead outside the source `root` (no loops, no image counted twice)."""
    found, seen, stack = [], set(), [folder]
    while stack:
        current = stack.pop()
        try:
            info = current.stat()
            entries = sorted(current.iterdir())
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        for entry in entries:
            if entry.is_dir():
                if entry.is_symlink() and _loops_back(entry, root):
                    log.warning("skipping %s: a link back into the image source", entry)
                elif not entry.name.startswith("."):
                    stack.append(entry)
            elif _is_image(entry):
                found.append(entry)
    return sorted(found)


def _folder_items(root: Path, stats: ImageStats) -> list[_Item]:
    real_root = root.resolve()
    folders = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        if d.is_symlink() and _loops_back(d, real_root):
            log.warning("skipping %s: a link back into the image source, not a class folder", d)
            continue
        folders.append(d)
    classes = {d.name: images for d in folders if (images := _images_under(d, real_root))}
    if classes:
        stats.kind, stats.classes = "class-folder", list(classes)
        return [_Item(p, label) for label, images in enumerate(classes.values()) for p in images]
    stats.kind = "flat-folder"
    return [_Item(p, -1) for p in sorted(root.iterdir()) if _is_image(p)]


def _npy_header(fp, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy header, read without reading the data."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"{what}: .npy format version {version} is not known")
    return tuple(shape), dtype


def _check_array_header(shape: tuple[int, ...], dtype: np.dtype, stored: int, what: str) -> None:
    """Refuse an array whose header claims more bytes than are stored, or more than MAX_ARRAY_BYTES, before
    numpy allocates it (a header may claim any shape)."""
    if dtype.hasobject or dtype.itemsize == 0:
        raise PfdeployError(f"{what} holds {dtype} data, not numbers; {ARRAY_FIX}")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise PfdeployError(f"{what} holds {nbytes} bytes of images, over pfdeploy's limit of {MAX_ARRAY_BYTES}; "
                            "use fewer or smaller images")
    if nbytes > stored:
        raise PfdeployError(f"{what} declares {shape} {dtype} ({nbytes} bytes) but holds {stored}; the file is "
                            "truncated or damaged")


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as fp:
        shape, dtype = _npy_header(fp, str(path))
        _check_array_header(shape, dtype, path.stat().st_size - fp.tell(), str(path))
        fp.seek(0)
        return np.load(fp, allow_pickle=False)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with zipfile.ZipFile(path) as archive:
        names = {n.removesuffix(".npy"): n for n in archive.namelist() if n.endswith(".npy")}
        key = next((k for k in ARRAY_KEYS if k in names), None)
        if key is None and len(names) == 1:
            key = next(iter(names))
        if key is None:
            raise PfdeployError(f"{path} holds {sorted(names)[:10]}; name the image array one of {ARRAY_KEYS}")
        labels_key = next((k for k in LABEL_KEYS if k in names and k != key), None)

        def member(name: str) -> np.ndarray:
            info = archive.getinfo(names[name])
            with archive.open(info) as fp:
                shape, dtype = _npy_header(fp, f"{path}:{name}")
                _check_array_header(shape, dtype, info.file_size - fp.tell(), f"{path}:{name}")
            with archive.open(info) as fp:
                return np.lib.format.read_array(fp, allow_pickle=False)

        return member(key), (member(labels_key) if labels_key else None)


def _read_array(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) of an .npy/.npz file, each array's header checked before it is read."""
    try:
        if zipfile.is_zipfile(path):
            return _read_npz(path)
        return _read_npy(path), None
    except PfdeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's and zipfile's errors on a damaged file
        raise PfdeployError(f"{path} is not a readable .npy/.npz array ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); {ARRAY_FIX}") from None


def _as_nhwc_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """(N,H,W), (N,H,W,1|3) or (N,3,H,W) uint8 (or float in [0, 1]) -> (N,H,W,C) uint8."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise PfdeployError(f"{path}: expected images shaped (N, H, W[, 3]), got {array.shape}")
    if array.shape[-1] not in (1, 3) and array.shape[1] in (1, 3):
        array = np.moveaxis(array, 1, -1)
    if array.shape[-1] not in (1, 3):
        raise PfdeployError(f"{path}: expected 1 or 3 channels, got shape {array.shape}")
    height, width = array.shape[1:3]
    if height < 1 or width < 1 or height * width > MAX_IMAGE_PIXELS:
        raise PfdeployError(f"{path}: images of {height}x{width} pixels; each must have 1..{MAX_IMAGE_PIXELS} pixels")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
            raise PfdeployError(f"{path}: expected uint8 images or floats in [0, 1], got {array.dtype}")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise PfdeployError(f"{path}: expected uint8 images or floats in [0, 1], got {array.dtype} values "
                                "outside [0, 1] (or NaN)")
        array = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    return array


def _checked_labels(labels: np.ndarray | None, count: int, path: Path) -> np.ndarray | None:
    """The labels of an array source as int64 class indices, or a one-line refusal."""
    if labels is None:
        return None
    if labels.ndim != 1 or len(labels) != count or not np.issubdtype(labels.dtype, np.integer) or \
            (labels.size and labels.min() < 0):
        raise PfdeployError(f"{path}: labels must be {count} integer class indices >= 0, one per image, got "
                            f"{labels.dtype} {labels.shape}; {ARRAY_FIX}")
    return labels.astype(np.int64)


def read_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file into 8-bit RGB (`rgb8_from_image`), or raise an ImageProblem (a PfdeployError).

    A FIFO or device is refused before it is opened; an image over `max_pixels` (a decompression bomb) is
    refused from its header, before its pixels are decoded; whatever Pillow raises on a file that is not
    an image, or is truncated or damaged, is one line naming the file.
    """
    path = require_regular_file(path, "image", "give an image file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:  # reads the header only
                if image.width * image.height > max_pixels:
                    raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels > {max_pixels}")
                image.load()
                return rgb8_from_image(image, str(path))
        except ImageProblem:
            raise
        except PfdeployError as exc:  # rgb8_from_image: a 16-bit or float image without a scale
            raise ImageProblem(str(exc), refused=True) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageProblem(f"image {path} is refused as a decompression bomb ({exc}); pfdeploy decodes at most "
                               f"{max_pixels} pixels: resize it", refused=True) from None
        except Exception as exc:  # noqa: BLE001 - Pillow's errors on a hostile file (OSError, SyntaxError, ...)
            reason = str(exc).splitlines()[0][:160] if str(exc) else ""
            raise ImageProblem(f"cannot read image {path} ({type(exc).__name__}: {reason}); it is not an image, "
                               "or is truncated or damaged") from None


class ImageSource:
    """A resolved image source: its items (files or array rows) and labels."""

    def __init__(self, source: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS):
        path = Path(source)
        self.path, self.max_pixels, self.array = path, max_pixels, None
        self.stats = ImageStats(str(path), "flat-folder")
        if path.is_dir():
            self.items = _folder_items(path, self.stats)
        elif path.suffix.lower() in ARRAY_SUFFIXES and path.exists():
            require_regular_file(path, "image array", "give an .npy/.npz file")
            array, labels = _read_array(path)
            self.array, self.stats.kind = _as_nhwc_uint8(array, path), "array"
            labels = _checked_labels(labels, len(self.array), path)
            self.items = [_Item(i, int(labels[i]) if labels is not None else -1) for i in range(len(self.array))]
        elif not path.exists():
            raise PfdeployError(f"image source {path} does not exist; pass a folder of images or an .npy/.npz file")
        else:
            raise PfdeployError(f"{path} is not an image source; pass a folder of images or an .npy/.npz file")
        self.stats.found = len(self.items)
        if not self.items:
            raise PfdeployError(
                f"no images in {path}; expected image files ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                "directly inside it or in one folder per class"
            )

    def select(self, num_images: int | None, seed: int) -> list[_Item]:
        """All items in order, or a seeded random order to draw `num_images` from."""
        if num_images is not None and num_images < 1:
            raise PfdeployError(f"--num-images must be at least 1, got {num_images}")
        if num_images is None or num_images >= len(self.items):
            return list(self.items)
        order = np.random.default_rng(seed).permutation(len(self.items))
        return [self.items[i] for i in order]

    def open(self, item: _Item) -> Image.Image | None:
        """The RGB image of `item`, or None (counted in stats) when it cannot be used."""
        if self.array is not None:
            pixels = self.array[item.ref]
            return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
        try:
            return read_image(item.ref, self.max_pixels)
        except ImageProblem as exc:
            self.stats.note("refused" if exc.refused else "skipped", str(item.ref), str(exc))
        except PfdeployError as exc:  # gone, or replaced by a FIFO, since the folder was listed
            self.stats.note("skipped", str(item.ref), str(exc))
        return None

    def iter_labeled(self, num_images: int | None = None, seed: int = 0) -> Iterator[tuple[Image.Image, int]]:
        """Yield (RGB image, label) for up to `num_images` readable images."""
        want = len(self.items) if num_images is None else min(num_images, len(self.items))
        self.stats.selected = want
        for item in self.select(num_images, seed):
            if self.stats.loaded >= want:
                return
            image = self.open(item)
            if image is not None:
                self.stats.loaded += 1
                yield image, item.label


def iter_images(source: str | Path, *, num_images: int | None = None, seed: int = 0,
                max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Iterator[Image.Image], ImageStats]:
    """(iterator of RGB PIL images, stats that fill in as it is consumed) for an image source."""
    src = ImageSource(source, max_pixels=max_pixels)
    return (image for image, _ in src.iter_labeled(num_images, seed)), src.stats


def load_labeled(source: str | Path, pre: Preprocess, *, num_images: int | None = None, seed: int = 0,
                 layout: str = "nchw", max_pixels: int = MAX_IMAGE_PIXELS,
                 progress: bool | None = None) -> tuple[np.ndarray, np.ndarray, ImageStats]:
    """(batch, labels, stats): preprocessed images of a source and their labels (-1 if unlabeled).

    `layout="nchw"` gives normalized float32 (N, 3, S, S); `"nhwc"` gives the uint8 crops
    (N, S, S, 3) that a `uint8-nhwc` graph takes. Raises PfdeployError if nothing is readable.
    """
    from tqdm import tqdm

    if layout not in ("nchw", "nhwc"):
        raise PfdeployError(f"unknown layout {layout!r}; use nchw or nhwc")
    src = ImageSource(source, max_pixels=max_pixels)
    crops, labels = [], []
    total = src.stats.found if num_images is None else min(num_images, src.stats.found)
    bar = tqdm(src.iter_labeled(num_images, seed), total=total, desc="images", unit="img",
               disable=(None if progress is None else not progress), leave=False)
    for image, label in bar:
        crops.append(crop_uint8(image, pre))
        labels.append(label)
    stats = src.stats
    if not crops:
        raise PfdeployError(f"none of the {stats.found} images in {source} could be read "
                            f"({'; '.join(stats.examples[:2])}); check the files")
    if stats.skipped or stats.refused:
        log.warning("%s", stats.summary())
    batch = np.stack(crops)
    out = batch if layout == "nhwc" else normalize_uint8(batch, pre)
    return out, np.asarray(labels, dtype=np.int64), stats


def load_batch(source: str | Path, pre: Preprocess, *, num_images: int | None = None, seed: int = 0,
               layout: str = "nchw", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Preprocessed images of a source as one array (see `load_labeled`)."""
    return load_labeled(source, pre, num_images=num_images, seed=seed, layout=layout, max_pixels=max_pixels)[0]
