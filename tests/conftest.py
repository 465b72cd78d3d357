"""Shared test fixtures: the model registry, layout files, and skips for GPU/TensorRT tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
LAYOUTS = FIXTURES / "pflayer_layout"
BIG_MODELS = {"vit_b_max", "pit_b_max"}

torch.set_num_threads(max(1, torch.get_num_threads()))


def layout(name: str) -> dict:
    """The published checkpoint layout (keys, shapes, parameters, MACs) of a layout file."""
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = has_cuda
    except ImportError:
        has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none on this machine"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(
                pytest.mark.skip(reason="needs TensorRT and a GPU; install pfdeploy[tensorrt] on a GPU machine")
            )
