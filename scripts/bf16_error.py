"""How far BF16 arithmetic moves the logits: the evidence behind verify's `bf16` tolerance row.

    flock /tmp/pfdeploy-cpu.lock .venv/bin/python scripts/bf16_error.py

The development machines have no AVX512-BF16 or AMX, so OpenVINO cannot compute BF16 on them. What
can be measured anywhere is BF16 rounding itself: PyTorch runs each model with its weights and every
activation in bfloat16 (software on such CPUs) and `compare_logits` compares it with the FP32 model
on verify's inputs (noise, real-looking images and, for the trained fixtures, their held-out digits).
That is a worse case than OpenVINO's BF16, which accumulates dot products in FP32 and keeps
normalizations in FP32, so the tolerances (`pfdeploy.runtime.verify.TOLERANCES["bf16"]`) are set
above the worst error printed here. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch

from pfdeploy.calibration.fixtures import get_fixture, list_fixtures, load_fixture
from pfdeploy.calibration.preprocess import normalize_uint8, preprocess_for
from pfdeploy.models import create_model
from pfdeploy.runtime.verify import TOLERANCES, compare_logits, folder_images, random_images, smooth_images

MODELS = ("r50_hybrid", "vit_s_max", "pit_s_max")  # seeded random weights at 224x224
STATS = ("max_rel", "cosine", "top1", "top5")


def bf16_stats(model: torch.nn.Module, sources: dict[str, np.ndarray], pre) -> dict[str, dict]:
    """compare_logits of the model in bfloat16 against the model in float32, per input source."""
    low = copy.deepcopy(model).to(torch.bfloat16)
    out = {}
    for name, images in sources.items():
        x = torch.from_numpy(normalize_uint8(images, pre))
        with torch.no_grad():
            ref, got = model(x).numpy(), low(x.to(torch.bfloat16)).float().numpy()
        out[name] = compare_logits(ref, got, "bf16")
    return out


def rows(samples: int) -> list[dict]:
    torch.manual_seed(0)
    table = []
    for name in list_fixtures():
        model, pre = load_fixture(name)
        sources = {"random": random_images(samples, pre.size, 0), "real-looking": smooth_images(samples, pre.size, 1),
                   "data": folder_images(get_fixture(name).val_dir, pre, samples, 0)}
        table += [{"model": name, "source": s, **v} for s, v in bf16_stats(model.eval(), sources, pre).items()]
    for name in MODELS:
        pre = preprocess_for(name)
        sources = {"random": random_images(8, pre.size, 0), "real-looking": smooth_images(8, pre.size, 1)}
        table += [{"model": name, "source": s, **v}
                  for s, v in bf16_stats(create_model(name).eval(), sources, pre).items()]
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64, help="images per source for the fixtures (default 64)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    table = rows(args.samples)
    print("| model | source | max_rel | cosine | top-1 agreement | top-5 | within bf16 tolerances |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in table:
        print(f"| {r['model']} | {r['source']} | {r['max_rel']:.4f} | {r['cosine']:.5f} | {r['top1']:.3f} | "
              f"{r['top5']:.3f} | {'yes' if r['passed'] else 'no'} |")
    worst = {k: (max if k == "max_rel" else min)(r[k] for r in table) for k in STATS}
    print(f"\nworst: {worst}; tolerances: {TOLERANCES['bf16']}")
    return 0 if all(r["passed"] for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
