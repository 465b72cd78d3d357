"""Trained fixtures exported once per session, and their held-out images."""

from __future__ import annotations

import numpy as np
import pytest

from pfdeploy.calibration.fixtures import get_fixture


@pytest.fixture(scope="session")
def fixture_onnx(tmp_path_factory):
    """fixture_onnx(name, precision="fp32") -> ONNX export of a trained fixture (cached)."""
    from pfdeploy.export import onnx_from_model

    cache: dict = {}
    root = tmp_path_factory.mktemp("fixtures-onnx")

    def export(name: str, precision: str = "fp32"):
        if (name, precision) not in cache:
            fx = get_fixture(name)
            cache[name, precision] = onnx_from_model(
                fx.model, root / f"{name}.{precision}.onnx", checkpoint=fx.checkpoint, num_classes=fx.num_classes,
                overrides=fx.overrides, preprocess=fx.preprocess, precision=precision)
        return cache[name, precision]

    return export


@pytest.fixture(scope="session")
def held_out():
    """held_out(name) -> (images, labels) of the fixture's val split, through pfdeploy preprocessing."""
    from pfdeploy.calibration import load_labeled

    cache: dict = {}

    def load(name: str):
        if name not in cache:
            fx = get_fixture(name)
            x, y, _ = load_labeled(fx.val_dir, fx.preprocess)
            cache[name] = (x, y)
        return cache[name]

    return load


@pytest.fixture(scope="session")
def top1():
    """top1(onnx_path, images, labels) -> top-1 accuracy (percent) under ONNX Runtime CPU."""
    return _top1


def _top1(onnx_path, images: np.ndarray, labels: np.ndarray) -> float:
    from pfdeploy.runtime.ort_options import ort_session_from_onnx

    session = ort_session_from_onnx(onnx_path)
    name = session.get_inputs()[0].name
    preds = np.concatenate([session.run(None, {name: images[i:i + 100]})[0].argmax(1)
                            for i in range(0, len(images), 100)])
    return 100.0 * float(np.mean(preds == labels))


@pytest.fixture(scope="session")
def outlier_export(tmp_path_factory):
    """outlier_export(case) -> (FP32 ONNX, checkpoint) of a case of tests/outlier_fixtures.py, exported once."""
    from outlier_fixtures import CASES, export_outlier

    cache: dict = {}
    root = tmp_path_factory.mktemp("outlier-onnx")

    def export(case: str):
        if case not in cache:
            cache[case] = export_outlier(CASES[case], root)
        return cache[case]

    return export
