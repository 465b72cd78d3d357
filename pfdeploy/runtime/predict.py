"""`predict` (top-k classes of image files) and `evaluate` (top-1/top-5 on an ImageNet-style folder).

Both use the artifact's recorded Preprocess and the shared code of pfdeploy.calibration.preprocess
(resize, center crop, normalize), exactly what calibration and verification use.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pfdeploy.calibration.preprocess import Preprocess, crop_uint8, normalize_uint8
from pfdeploy.errors import PfdeployError
from pfdeploy.runtime.session import Session

log = logging.getLogger(__name__)

def session_preprocess(session: Session) -> Preprocess:
    """The session's Preprocess, checked against its input size."""
    pre = session.preprocess
    if pre is None:
        raise PfdeployError("the artifact records no preprocessing (pfdeploy.preprocess); re-export it with "
                            "`pfdeploy export`")
    if pre.size != session.input_spec.image_size:
        raise PfdeployError(f"recorded preprocessing crops to {pre.size} but the artifact takes "
                            f"{session.input_spec.image_size}x{session.input_spec.image_size} images")
    return pre


def batch_from_images(images: Sequence[Image.Image], pre: Preprocess, session: Session) -> np.ndarray:
    """PIL images -> the array the session takes (uint8 NHWC, or normalized float NCHW)."""
    crops = np.stack([crop_uint8(image, pre) for image in images])
    if session.input_spec.dtype == "uint8":
        return crops
    return normalize_uint8(crops, pre).astype(session.input_spec.dtype, copy=False)


def open_image(path: str | Path) -> Image.Image:
    """Decode an image file into 8-bit RGB with the calibration stage's reader (the same pixel limit,
    16-bit and float scaling, and refusals: missing, a FIFO, too large, not an image), as a PfdeployError."""
    from pfdeploy.calibration.images import read_image

    return read_image(path)


LABELS_FIX = "give a UTF-8 text file with one class name per line, in class-index order"


def read_label_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line in class-index order (blank lines skipped); a missing,
    non-regular, over-large or non-UTF-8 file is one PfdeployError line."""
    from pfdeploy.limits import read_text_file

    names = [line.strip() for line in read_text_file(path, "labels file", LABELS_FIX).splitlines() if line.strip()]
    if not names:
        raise PfdeployError(f"labels file {path} holds no names; {LABELS_FIX}")
    return names


def read_labels(path: str | Path | None, num_classes: int) -> list[str]:
    """Class names from a text file (one per line), or the class indices as strings."""
    if path is None:
        return [str(i) for i in range(num_classes)]
    lines = read_label_names(path)
    if len(lines) != num_classes:
        raise PfdeployError(f"labels file {path} has {len(lines)} names but the model has {num_classes} "
                            "classes; give one name per line, in class-index order")
    return lines


_INDEX = re.compile(r"[0-9]{1,9}")


def _names(names: Sequence[str], count: int = 5) -> str:
    """The first `count` names for a message, each on no more than its own line (repr when not printable)."""
    return ", ".join(n if n.isprintable() else repr(n) for n in names[:count])


def class_indices(folders: Sequence[str], names: Sequence[str] | None, data: str | Path) -> list[int]:
    """The model output index of each class folder, by name, never by position.

    With `names` (the model's class names in index order: a --labels file, a fixture's classes) a folder
    is the index of its name; without them a folder named by a non-negative integer is that index (the
    folder `3` holds class 3 whatever other folders exist). A folder that matches no name, a name given
    twice, non-numeric folders without names, or two folders of one index are refused in one line: an
    accuracy from a guessed mapping would be wrong without saying so.
    """
    if names is not None:
        positions: dict[str, int] = {}
        for index, name in enumerate(names):
            positions.setdefault(name, -1 if name in positions else index)
        unknown = [f for f in folders if f not in positions]
        if unknown:
            raise PfdeployError(f"class folder(s) {_names(unknown)} of {data} are not among the {len(names)} "
                                "class names given; name the folders by the model's class names (or indices)")
        ambiguous = [f for f in folders if positions[f] < 0]
        if ambiguous:
            raise PfdeployError(f"class name(s) {_names(ambiguous)} appear more than once among the class "
                                f"names given; {LABELS_FIX}")
        return [positions[f] for f in folders]
    if not all(_INDEX.fullmatch(f) for f in folders):
        shown = _names([f for f in folders if not _INDEX.fullmatch(f)])
        raise PfdeployError(f"class folders of {data} are named by class names ({shown[:80]}), not by class "
                            f"indices: give the model's class names with --labels FILE ({LABELS_FIX})")
    indices = [int(f) for f in folders]
    if len(set(indices)) != len(indices):
        raise PfdeployError(f"two class folders of {data} name the same class index ({_names(folders, 10)}); "
                            "keep one folder per class")
    return indices


def check_class_folders(data: str | Path, names: Sequence[str] | None) -> None:
    """Refuse, in one line and before any work, class folders of `data` that `class_indices` cannot map to
    the model's outputs by name (with `names`: the model's class names); no-op without class folders."""
    from pfdeploy.calibration.images import ImageSource

    folders = ImageSource(data).stats.classes
    if folders:
        class_indices(folders, None if names is None else list(names), data)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits per row, best first."""
    k = min(k, logits.shape[-1])
    part = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    order = np.take_along_axis(logits, part, axis=-1).argsort(axis=-1)[:, ::-1]
    return np.take_along_axis(part, order, axis=-1)


def run_padded(session: Session, batch: np.ndarray) -> np.ndarray:
    """Run `batch`, zero-padding it up to the artifact's minimum batch (static-batch artifacts)."""
    n, need = batch.shape[0], session.input_spec.min_batch
    if n >= need:
        return session(batch)
    pad = np.zeros((need - n, *batch.shape[1:]), batch.dtype)
    return session(np.concatenate([batch, pad]))[:n]


def predict(images: Sequence[str | Path], model: Any, *, top_k_count: int = 5,
            labels: str | Path | None = None, backend: str = "auto", device: str | None = None,
            **options: Any) -> list[dict[str, Any]]:
    """Top-k classes of each image file: [{"image", "top": [{"index", "label", "probability"}]}].

    The labels file and every image are read (and refused in one line) before the model runs."""
    from pfdeploy.runtime import load

    if not images:
        raise PfdeployError("predict needs at least one image file")
    if top_k_count < 1:
        raise PfdeployError(f"--top-k must be at least 1, got {top_k_count}")
    given = None if labels is None else read_label_names(labels)
    decoded = [open_image(p) for p in images]
    with load(model, backend=backend, device=device, **options) as session:
        pre = session_preprocess(session)
        batch = batch_from_images(decoded, pre, session)
        step = session.input_spec.max_batch or len(images)
        logits = np.concatenate([run_padded(session, batch[i:i + step]) for i in range(0, len(batch), step)])
    if given is not None and len(given) != logits.shape[-1]:
        raise PfdeployError(f"labels file {labels} has {len(given)} names but the model has {logits.shape[-1]} "
                            "classes; give one name per line, in class-index order")
    names = given or read_labels(None, logits.shape[-1])
    probs = softmax(logits)
    best = top_k(logits, top_k_count)
    return [
        {"image": str(path), "top": [{"index": int(i), "label": names[i], "probability": float(probs[row, i])}
                                     for i in best[row]]}
        for row, path in enumerate(images)
    ]


def _labeled_source(data: str | Path):
    """The calibration stage's ImageSource for `data`, refused unless every image has a class label."""
    from pfdeploy.calibration.images import ImageSource

    source = ImageSource(data)
    if any(item.label < 0 for item in source.items):
        raise PfdeployError(f"{data} has no class labels; eval needs an ImageNet-style folder DIR/<class>/* "
                            "(or an .npz with images and labels)")
    return source


def _chunks(pairs, size: int):
    chunk = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def evaluate(artifact: Any, data: str | Path, *, batch: int = 32, limit: int | None = None,
             backend: str = "auto", device: str | None = None, progress: bool = True, seed: int = 0,
             labels: str | Path | Sequence[str] | None = None, **options: Any) -> dict[str, Any]:
    """Top-1/top-5 accuracy (percent) of an artifact on an ImageNet-style folder.

    Images come from pfdeploy.calibration.images (unreadable files are skipped and counted); `limit`
    evaluates that many images drawn with `seed`. Class folders map to the model's outputs by name
    (`class_indices`): a folder named by an integer is that output; `labels` (a --labels file, or the
    class names themselves, e.g. a fixture's) gives the names of the outputs instead. A set that cannot
    be mapped, or that names an output the model does not have, is refused before any accuracy is given.
    An .npz source's labels are output indices.
    """
    from tqdm import tqdm

    from pfdeploy.runtime import load

    if batch < 1:
        raise PfdeployError(f"--batch must be at least 1, got {batch}")
    names = read_label_names(labels) if isinstance(labels, (str, Path)) else labels
    source = _labeled_source(data)
    total = min(limit or len(source.items), len(source.items))
    correct1 = correct5 = count = 0
    with load(artifact, backend=backend, device=device, **options) as session:
        pre = session_preprocess(session)
        if source.stats.classes:  # class folders: each item's label is its folder's position
            index_of = class_indices(source.stats.classes, None if names is None else list(names), data)
            classes = source.stats.classes
        else:  # an array's labels are output indices already
            classes = sorted({item.label for item in source.items})
            index_of = list(range(max(classes) + 1))
        step = min(batch, session.input_spec.max_batch or batch)
        bar = tqdm(total=total, desc="eval", unit="img", disable=not progress)
        for chunk in _chunks(source.iter_labeled(limit, seed), step):
            logits = run_padded(session, batch_from_images([image for image, _ in chunk], pre, session))
            if names is not None and len(names) != logits.shape[-1]:
                raise PfdeployError(f"{len(names)} class names were given but the model has {logits.shape[-1]} "
                                    f"classes; {LABELS_FIX}")
            if max(index_of) >= logits.shape[-1]:
                raise PfdeployError(f"{data} has a class {max(index_of)} but the model's outputs are 0.."
                                    f"{logits.shape[-1] - 1}; check --data, --labels and the artifact")
            truth = np.array([index_of[label] for _, label in chunk])
            best = top_k(logits, 5)
            correct1 += int((best[:, 0] == truth).sum())
            correct5 += int((best == truth[:, None]).any(axis=1).sum())
            count += len(chunk)
            bar.update(len(chunk))
        bar.close()
        described = session.describe()
    if count == 0:
        raise PfdeployError(f"none of the images in {data} could be read ({source.stats.summary()})")
    return {"artifact": str(artifact), "data": str(data), "images": count, "classes": len(classes),
            "skipped": source.stats.skipped + source.stats.refused,
            "top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, **described}
