"""Cheap ONNX artifacts of every registered model, exported once per test session."""

from __future__ import annotations

import pytest

from pfdeploy.models import get_config

# Small members of each family: same layers and ops, a fraction of the compute.
CHEAP = {
    "resnet": {"layers": (1, 1, 1, 1), "base_width": 8, "img_size": 32},
    "vit": {"embed_dim": 48, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32},
    "pit": {"base_dim": 8, "depth": (2, 2, 2), "heads": (1, 2, 2), "patch_size": 4, "stride": 4, "img_size": 32},
}
CLASSES = 10


def cheap_overrides(name: str) -> dict:
    """create_model overrides that make `name` tiny (same family, same layer types)."""
    return dict(CHEAP[get_config(name).family])


@pytest.fixture(scope="session")
def cheap_onnx(tmp_path_factory):
    """export(name, **onnx_from_model kwargs) -> path of a cached cheap ONNX export of `name`."""
    from pfdeploy.export import onnx_from_model

    cache: dict = {}
    root = tmp_path_factory.mktemp("onnx")

    def export(name: str, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            out = root / f"{name}-{len(cache)}.onnx"
            cache[key] = onnx_from_model(name, out, num_classes=CLASSES, overrides=cheap_overrides(name), **kwargs)
        return cache[key]

    return export


@pytest.fixture(scope="session")
def cheap():
    """cheap(name) -> create_model overrides of a tiny `name`."""
    return cheap_overrides
