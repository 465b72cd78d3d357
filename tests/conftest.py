"""Test-wide setup: skip GPU/TensorRT tests with a reason where the hardware or library is absent, seed every
random generator before each test, and fake the CPU's feature set for the whole run with PFDEPLOY_TEST_CPU."""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import cpu_facts
import numpy as np
import pytest
import torch

_GLOBAL_CPU: dict = {}


def pytest_configure(config):
    """PFDEPLOY_TEST_CPU=avx2|avx512-vnni|avx512-bf16|amx: every test sees that CPU (tests/cpu_facts.py)."""
    name = os.environ.get(cpu_facts.ENV)
    if not name:
        return
    if name not in cpu_facts.FEATURE_SETS:
        raise pytest.UsageError(f"{cpu_facts.ENV}={name!r}: use one of {', '.join(cpu_facts.FEATURE_SETS)}")
    folder = tempfile.mkdtemp(prefix="pfdeploy-test-cpu-")
    patch = pytest.MonkeyPatch()
    cpu_facts.use_cpu(patch, name, folder)
    _GLOBAL_CPU.update(name=name, patch=patch, folder=folder)


def pytest_unconfigure(config):
    if _GLOBAL_CPU:
        _GLOBAL_CPU["patch"].undo()
        shutil.rmtree(_GLOBAL_CPU["folder"], ignore_errors=True)
        _GLOBAL_CPU.clear()


def pytest_report_header(config):
    return cpu_facts.described(_GLOBAL_CPU.get("name"))


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


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whatever ran before it (models initialise from torch's
    global generator; exports seed it)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def cpu_features(monkeypatch, tmp_path):
    """use(name): pfdeploy sees a CPU with feature set `name` (tests/cpu_facts.FEATURE_SETS) for this test."""
    return lambda name: cpu_facts.use_cpu(monkeypatch, name, tmp_path)


@pytest.fixture(scope="session")
def cheap_exports(tmp_path_factory):
    """name -> (onnx path, checkpoint) of the model's cheap form, exported once per test session."""
    from export_helpers import cheap_exporter

    return cheap_exporter(tmp_path_factory)
