"""Export/verify test helpers: cheap model forms, checkpoints with non-trivial weights, cached exports.

Imported by tests/export, tests/runtime and tests/calibration (tests/ is on sys.path via its conftest).

"Every registered model" in the cheap tests means every distinct graph: under the cheap overrides
several names build the same network (vit_ti/s/b_max and the three PiTs differ only in width,
heads and patch size, which CHEAP and TINY fix per family), so `distinct_graphs` keeps one
representative per graph, and the `slow` full-size tests (FULL_SIZE) cover every name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pfdeploy.export import onnx_from_model
from pfdeploy.models import create_model, get_config, list_models

# Small forms of each family that keep every kind of layer (both mixers, all stages, downsampling).
# Width, heads and patch are fixed per family, so the sizes of one family (ti/s/b) build one graph.
CHEAP = {
    "resnet": {"layers": (1, 1, 1, 1), "base_width": 16, "img_size": 64},
    "vit": {"embed_dim": 48, "num_heads": 2, "depth": 4, "img_size": 64},
    "pit": {"base_dim": 16, "depth": (2, 2, 2), "heads": (2, 4, 8), "patch_size": 16, "stride": 8, "img_size": 64},
}
# Tinier forms (32x32, fewest blocks that still hold every layer type) for tests that only need
# some graph of each family: runtime backends and quantization.
TINY = {
    "resnet": {"layers": (1, 1, 1, 1), "base_width": 8, "img_size": 32},
    "vit": {"embed_dim": 48, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32},
    "pit": {"base_dim": 8, "depth": (2, 2, 2), "heads": (1, 2, 2), "patch_size": 4, "stride": 4, "img_size": 32},
}
ALL_MODELS = list_models()
FULL_SIZE = [pytest.param(n, marks=pytest.mark.slow) for n in ALL_MODELS]
REPRESENTATIVES = ["r50_hybrid", "vit_s_max", "pit_s_max"]


def cheap(name: str) -> dict:
    """Cheap create_model overrides for a registered model."""
    return dict(CHEAP[get_config(name).family])


def tiny(name: str) -> dict:
    """The tiniest create_model overrides for a registered model (see TINY)."""
    return dict(TINY[get_config(name).family])


def graph_groups(overrides_of) -> list[list[str]]:
    """Registered names grouped by the network `create_model(name, **overrides_of(name))` builds.

    Two names build the same graph when their family and constructor arguments after the
    overrides are equal (the registry's kwargs hold everything that shapes the network).
    Groups and their members keep registry order.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for name in ALL_MODELS:
        cfg = get_config(name)
        kwargs = json.dumps({**cfg.kwargs, **overrides_of(name)}, sort_keys=True)
        groups.setdefault((cfg.family, kwargs), []).append(name)
    return list(groups.values())


def distinct_graphs(overrides_of) -> list:
    """One pytest param per distinct graph under `overrides_of` (see `graph_groups`): the group's
    first name, with an id naming every member (so `-k vit_s_max` still selects its graph)."""
    return [pytest.param(group[0], id="=".join(group)) for group in graph_groups(overrides_of)]


CHEAP_GRAPHS = distinct_graphs(cheap)  # 6 graphs of 10 names: vit_ti/s/b_max build one, the PiTs one
TINY_GRAPHS = distinct_graphs(tiny)  # the same 6 graphs


def perturbed_checkpoint(name: str, path: Path, overrides: dict | None = None, seed: int = 1) -> Path:
    """Save a state_dict whose every weight and buffer is non-trivial (LayerNorm/BatchNorm included)."""
    gen = torch.Generator().manual_seed(seed)
    model = create_model(name, **(overrides or {}))
    state = model.state_dict()
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("running_var"):
            state[key] = 0.5 + noise.abs()
        elif key.endswith("weight") and value.dim() == 1:  # norm scales
            state[key] = 1.0 + 0.2 * noise
        else:
            state[key] = value + 0.02 * noise
    torch.save(state, path)
    return path


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def assert_close(ref: np.ndarray, got: np.ndarray, rel: float = 1e-4) -> None:
    """Equal to float32 accuracy: error within `rel` of the logit range."""
    np.testing.assert_allclose(got, ref, rtol=rel, atol=rel * float(np.abs(ref).max()))


def cheap_exporter(tmp_path_factory):
    """A function name -> (onnx path, checkpoint): the dynamic-batch fp32 ONNX of the model's cheap
    form exported from a perturbed checkpoint (tests use it through the session fixture
    `cheap_exports` in tests/conftest.py, so each model is exported once per session).
    """
    root = tmp_path_factory.mktemp("cheap_exports")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in cache or not cache[name][0].exists():
            ckpt = perturbed_checkpoint(name, root / f"{name}.pth", cheap(name))
            onnx_path = onnx_from_model(name, root / f"{name}.onnx", checkpoint=ckpt, overrides=cheap(name))
            cache[name] = (onnx_path, ckpt)
        return cache[name]

    return get

