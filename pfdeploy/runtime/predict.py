"""`predict` (top-k classes of image files) and `evaluate` (top-1/top-5 on an ImageNet-style folder).

Both use the artifact's recorded Preprocess and the shared code of pfdeploy.calibration.preprocess
(resize, center crop, normalize), exactly what calibration and verification use.
"""

from __future__ import annotations

import logging
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
    """Open an image file (PfdeployError naming the file if it is missing or unreadable)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise PfdeployError(f"image {path} not found") from None
    except OSError as exc:
        raise PfdeployError(f"cannot read image {path}: {exc}") from None


def read_labels(path: str | Path | None, num_classes: int) -> list[str]:
    """Class names from a text file (one per line), or the class indices as strings."""
    if path is None:
        return [str(i) for i in range(num_classes)]
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(lines) != num_classes:
        raise PfdeployError(f"labels file {path} has {len(lines)} names but the model has {num_classes} "
                            "classes; give one name per line, in class-index order")
    return lines


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
    """Top-k classes of each image file: [{"image", "top": [{"index", "label", "probability"}]}]."""
    from pfdeploy.runtime import load

    if not images:
        raise PfdeployError("predict needs at least one image file")
    if top_k_count < 1:
        raise PfdeployError(f"--top-k must be at least 1, got {top_k_count}")
    with load(model, backend=backend, device=device, **options) as session:
        pre = session_preprocess(session)
        batch = batch_from_images([open_image(p) for p in images], pre, session)
        step = session.input_spec.max_batch or len(images)
        logits = np.concatenate([run_padded(session, batch[i:i + step]) for i in range(0, len(batch), step)])
    names = read_labels(labels, logits.shape[-1])
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
             **options: Any) -> dict[str, Any]:
    """Top-1/top-5 accuracy (percent) of an artifact on an ImageNet-style folder.

    Images come from pfdeploy.calibration.images (sorted class folders give the labels; unreadable
    files are skipped and counted); `limit` evaluates that many images drawn with `seed`.
    """
    from tqdm import tqdm

    from pfdeploy.runtime import load

    if batch < 1:
        raise PfdeployError(f"--batch must be at least 1, got {batch}")
    source = _labeled_source(data)
    classes = source.stats.classes or sorted({item.label for item in source.items})
    total = min(limit or len(source.items), len(source.items))
    correct1 = correct5 = count = 0
    with load(artifact, backend=backend, device=device, **options) as session:
        pre = session_preprocess(session)
        step = min(batch, session.input_spec.max_batch or batch)
        bar = tqdm(total=total, desc="eval", unit="img", disable=not progress)
        for chunk in _chunks(source.iter_labeled(limit, seed), step):
            logits = run_padded(session, batch_from_images([image for image, _ in chunk], pre, session))
            if logits.shape[-1] < len(classes):
                raise PfdeployError(f"the model has {logits.shape[-1]} classes but {data} has {len(classes)}")
            truth = np.array([label for _, label in chunk])
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
