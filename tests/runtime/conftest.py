"""Cheap ONNX artifacts of every registered model, exported once per test session from checkpoints
with non-trivial weights (so logits span a real range, not the ~0.06 of a fresh initialization)."""

from __future__ import annotations

import pytest
from export_helpers import perturbed_checkpoint
from export_helpers import tiny as cheap_overrides

CLASSES = 10


@pytest.fixture(scope="session")
def cheap_checkpoint(tmp_path_factory):
    """checkpoint(name) -> path of the perturbed checkpoint of tiny `name` that cheap_onnx exports."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def checkpoint(name: str):
        if name not in cache:
            overrides = {**cheap_overrides(name), "num_classes": CLASSES}
            cache[name] = perturbed_checkpoint(name, root / f"{name}.pth", overrides)
        return cache[name]

    return checkpoint


@pytest.fixture(scope="session")
def cheap_onnx(tmp_path_factory, cheap_checkpoint):
    """export(name, **onnx_from_model kwargs) -> path of a cached cheap ONNX export of `name`
    (weights: `cheap_checkpoint(name)`; open its torch twin with `checkpoint=cheap_checkpoint(name)`)."""
    from pfdeploy.export import onnx_from_model

    cache: dict = {}
    root = tmp_path_factory.mktemp("onnx")

    def export(name: str, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            out = root / f"{name}-{len(cache)}.onnx"
            cache[key] = onnx_from_model(name, out, checkpoint=cheap_checkpoint(name), num_classes=CLASSES,
                                         overrides=cheap_overrides(name), **kwargs)
        return cache[key]

    return export


@pytest.fixture(scope="session")
def cheap():
    """cheap(name) -> create_model overrides of a tiny `name`."""
    return cheap_overrides
