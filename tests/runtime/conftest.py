"""Cheap ONNX artifacts of every registered model, exported once per test session."""

from __future__ import annotations

import pytest
from export_helpers import tiny as cheap_overrides

CLASSES = 10


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
