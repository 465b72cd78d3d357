"""Train the small test fixtures: narrow members of the PF family on scikit-learn's 8x8 digits.

    .venv/bin/python scripts/train_fixtures.py            # writes tests/fixtures/{trained,digits}

Deterministic (fixed seeds, deterministic algorithms, 2 threads) and quick (about a minute on two
CPU cores). The digits ship inside scikit-learn, so no download is needed. Each 8x8 digit (0..16)
is scaled to 0..255 and bicubically upsampled to a 32x32 grayscale PNG; the models see it through
pfdeploy's own preprocessing (`Preprocess(size=32, crop_pct=1.0, mean/std of the digits)`), the
same code that calibration, `verify --data` and `eval` use, so the held-out accuracy recorded in
`fixtures.json` is the accuracy of exactly what the deployment pipeline feeds the graphs.

Outputs (commit them together with this script):
- tests/fixtures/digits/{calib,val}/<class>/<index>.png   disjoint from the training images
- tests/fixtures/trained/<fixture>.pth                     plain state_dict
- tests/fixtures/trained/fixtures.json                     how to rebuild and feed each fixture
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from pfdeploy._io import sha256_file, write_bytes_atomic, write_json_atomic
from pfdeploy.calibration.preprocess import Preprocess, crop_uint8, normalize_uint8
from pfdeploy.models import count_parameters, create_model

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
SIZE = 32
NUM_VAL = 400
NUM_CALIB = 256

FIXTURES = {
    "r50_hybrid_digits": {
        "model": "r50_hybrid",
        "overrides": {"layers": [1, 1, 1, 1], "base_width": 8, "img_size": SIZE},
        "epochs": 12,
        "lr": 3e-3,
    },
    "vit_ti_max_digits": {
        "model": "vit_ti_max",
        "overrides": {"img_size": SIZE, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 2},
        "epochs": 20,
        "lr": 2e-3,
    },
}


def digit_images() -> tuple[list[Image.Image], np.ndarray]:
    """The 1797 bundled digits as 32x32 grayscale PIL images, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for pixels in digits.images:
        small = Image.fromarray(np.clip(pixels * 255.0 / 16.0, 0, 255).round().astype(np.uint8), mode="L")
        images.append(small.resize((SIZE, SIZE), Image.BICUBIC))
    return images, digits.target.astype(np.int64)


def split_indices(n: int) -> dict[str, np.ndarray]:
    """Disjoint train / calib / val index sets from one seeded permutation."""
    order = np.random.default_rng(SEED).permutation(n)
    return {
        "val": np.sort(order[:NUM_VAL]),
        "calib": np.sort(order[NUM_VAL : NUM_VAL + NUM_CALIB]),
        "train": np.sort(order[NUM_VAL + NUM_CALIB :]),
    }


def digits_preprocess(crops: np.ndarray) -> Preprocess:
    """Preprocess at 32x32 with the training crops' own mean/std (equal over the gray channels)."""
    x = crops.astype(np.float64) / 255.0
    mean, std = round(float(x.mean()), 4), round(float(x.std()), 4)
    return Preprocess(SIZE, 1.0, "bilinear", (mean, mean, mean), (std, std, std))


def write_images(images, labels, indices, folder: Path) -> None:
    """Write the split as an ImageNet-style class folder of PNGs (replacing an older one)."""
    if folder.exists():
        shutil.rmtree(folder)
    for index in indices:
        target = folder / str(int(labels[index])) / f"{int(index):04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        images[index].save(target, optimize=True)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (pad with the background value, random crop)."""
    pad = 2
    padded = nn.functional.pad(batch, (pad, pad, pad, pad), mode="replicate")
    out = torch.empty_like(batch)
    shifts = torch.randint(0, 2 * pad + 1, (len(batch), 2), generator=generator)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, dy : dy + SIZE, dx : dx + SIZE]
    return out


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    """AdamW + cosine schedule, batch 64, seeded shuffling and augmentation."""
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * ((len(x) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            loss = loss_fn(model(augment(x[idx], generator)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    pred = torch.cat([model(x[i : i + 128]).argmax(1) for i in range(0, len(x), 128)])
    return round(100.0 * float((pred == y).float().mean()), 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    parser.add_argument("--only", nargs="*", choices=sorted(FIXTURES), help="train only these fixtures")
    args = parser.parse_args(argv)

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    images, labels = digit_images()
    splits = split_indices(len(images))
    # The same code path the pipeline uses: Pillow image -> crop_uint8 -> normalize_uint8.
    probe = Preprocess(SIZE, 1.0, "bilinear")
    crops = np.stack([crop_uint8(img, probe) for img in images])
    pre = digits_preprocess(crops[splits["train"]])
    tensors = {k: torch.from_numpy(normalize_uint8(crops[v], pre)) for k, v in splits.items()}
    targets = {k: torch.from_numpy(labels[v]) for k, v in splits.items()}

    for split in ("calib", "val"):
        write_images(images, labels, splits[split], args.out / "digits" / split)

    trained_dir = args.out / "trained"
    index_path = trained_dir / "fixtures.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name, spec in FIXTURES.items():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(SEED)
        model = create_model(spec["model"], num_classes=10, **spec["overrides"])
        start = time.perf_counter()
        train(model, tensors["train"], targets["train"], spec["epochs"], spec["lr"])
        seconds = time.perf_counter() - start
        checkpoint = trained_dir / f"{name}.pth"
        buffer = io.BytesIO()  # a fixed archive name inside the zip: byte-identical reruns
        torch.save(model.state_dict(), buffer)
        write_bytes_atomic(checkpoint, buffer.getvalue())
        index[name] = {
            "model": spec["model"],
            "num_classes": 10,
            "overrides": spec["overrides"],
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": sha256_file(checkpoint),
            "parameters": count_parameters(model),
            "preprocess": pre.to_dict(),
            "data": {"calib": "digits/calib", "val": "digits/val", "classes": [str(c) for c in range(10)]},
            "fp32_top1": {"val": top1(model, tensors["val"], targets["val"]),
                          "train": top1(model, tensors["train"], targets["train"])},
            "train": {"epochs": spec["epochs"], "lr": spec["lr"], "seed": SEED,
                      "images": len(splits["train"]), "torch": torch.__version__},
        }
        print(f"{name}: val top-1 {index[name]['fp32_top1']['val']}% "
              f"({index[name]['parameters']} params, {seconds:.0f} s)")
    write_json_atomic(index_path, index)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
