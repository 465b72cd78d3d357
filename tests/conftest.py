"""Test-wide setup: skip GPU/TensorRT tests with a reason where the hardware or library is absent."""

from __future__ import annotations

import pytest
import torch


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


@pytest.fixture(scope="session")
def cheap_exports(tmp_path_factory):
    """name -> (onnx path, checkpoint) of the model's cheap form, exported once per test session."""
    from export_helpers import cheap_exporter

    return cheap_exporter(tmp_path_factory)
