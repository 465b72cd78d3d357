"""How the torch backend prepares a model (inference_plan): the choices for CUDA are pure logic, checked here
without a GPU; the CUDA runs themselves are in test_torch_cuda.py (marked gpu)."""

from __future__ import annotations

import pytest
import torch

from pfdeploy.errors import PfdeployError
from pfdeploy.runtime import OPTIONS, load
from pfdeploy.runtime.torch_backend import InferencePlan, TorchSession, inference_plan, prepared_model


def plan(**options) -> InferencePlan:
    return inference_plan(**{"family": "resnet", "device_type": "cuda", **options})


def test_cnns_run_channels_last_on_cuda_only():
    assert plan().channels_last
    assert not plan(device_type="cpu").channels_last
    assert not plan(family="vit").channels_last and not plan(family="pit").channels_last
    assert not plan(channels_last=False).channels_last  # an explicit choice wins
    assert plan(family="vit", channels_last=True).channels_last


def test_batchnorm_is_folded_unless_asked_not_to():
    assert plan().fold_bn and plan(device_type="cpu").fold_bn
    assert not plan(fold_bn=False).fold_bn


def test_compile_true_is_max_autotune_on_cuda_and_default_on_the_cpu():
    assert plan(compile=True).compile_mode == "max-autotune"
    assert plan(device_type="cpu", compile=True).compile_mode == "default"
    assert plan(compile=False).compile_mode is None and plan(compile=None).compile_mode is None
    assert plan(compile="reduce-overhead").compile_mode == "reduce-overhead"


def test_inductor_cuda_graphs_replace_the_sessions_own():
    assert plan(cuda_graph=True).cuda_graph  # eager: the session captures
    assert not plan(compile=True, cuda_graph=True).cuda_graph  # max-autotune captures itself
    assert not plan(compile="reduce-overhead", cuda_graph=True).cuda_graph
    assert plan(compile="default", cuda_graph=True).cuda_graph  # default mode: no graphs of its own
    assert plan(compile="max-autotune-no-cudagraphs", cuda_graph=True).cuda_graph


@pytest.mark.parametrize("options,message", [
    ({"compile": "fastest"}, "compile must be"),
    ({"device_type": "cpu", "cuda_graph": True}, "cuda_graph=True needs device='cuda'"),
    ({"device_type": "cpu", "fused": True}, "on CUDA only"),
    ({"fused": True, "fold_bn": False}, "drop fold_bn=False"),
])
def test_impossible_plans_are_refused_in_one_line(options, message):
    with pytest.raises(PfdeployError, match=message):
        plan(**options)


def test_prepared_model_is_a_copy_when_folded_or_fused(cheap):
    from pfdeploy.kernels import count_fused
    from pfdeploy.models import create_model
    from pfdeploy.runtime.fold import count_batchnorms

    model = create_model("r50_max", num_classes=10, **cheap("r50_max")).eval()
    assert prepared_model(model, plan(fold_bn=False)) is model
    folded = prepared_model(model, plan())
    assert folded is not model and count_batchnorms(folded) == 0 and count_batchnorms(model) > 0
    fused = prepared_model(model, plan(fused=True))
    assert count_fused(fused) == 1 and count_batchnorms(model) > 0


def test_sessions_report_their_plan_and_take_the_new_options(cheap):
    assert {"fold_bn", "fused"} <= OPTIONS["torch"]
    with load("r50_max", num_classes=10, overrides=cheap("r50_max")) as session:
        described = session.describe()["plan"]
        assert described == {"fold_bn": True, "channels_last": False, "compile_mode": None, "cuda_graph": False,
                             "fused": False}
        with pytest.raises(PfdeployError, match="on CUDA only"):
            TorchSession(session._model, fused=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_fused_on_cuda_without_a_gpu_names_the_gpu():
    with pytest.raises(PfdeployError, match="needs a CUDA GPU"):
        load("r50_max", device="cuda", fused=True)
