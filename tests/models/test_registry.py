"""Every registered model rebuilds the published layout exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pfdeploy.errors import PfdeployError
from pfdeploy.models import (
    count_macs,
    count_parameters,
    create_model,
    get_config,
    list_models,
    model_summary,
    parameter_free_layers,
)

LAYOUTS = Path(__file__).resolve().parents[1] / "fixtures" / "pflayer_layout"
ALL = list_models()
EXPECTED_NAMES = {
    "r50", "r50_max", "r50_hybrid", "vit_ti_max", "vit_s_max", "vit_b_max", "vit_s",
    "pit_ti_max", "pit_s_max", "pit_b_max",
}


def layout(name: str) -> dict:
    """The published checkpoint layout (keys, shapes, parameters, MACs) of a layout file."""
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def test_registry_has_every_model():
    assert set(ALL) == EXPECTED_NAMES


@pytest.mark.parametrize("name", ALL)
def test_state_dict_matches_layout_key_for_key(name):
    expected = layout(get_config(name).layout)
    got = [(k, list(v.shape)) for k, v in create_model(name).state_dict().items()]
    assert got == list(expected["state_dict"].items())


@pytest.mark.parametrize("name", ALL)
def test_parameters_and_macs_match_layout(name):
    expected = layout(get_config(name).layout)
    model = create_model(name)
    assert count_parameters(model) == expected["parameters"]
    assert count_macs(model, (3, 224, 224)) == expected["macs"]


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_batch_1_and_3(name):
    model = create_model(name, num_classes=10)
    with torch.no_grad():
        for batch in (1, 3):
            assert model(torch.randn(batch, 3, 224, 224)).shape == (batch, 10)


@pytest.mark.parametrize("name", ALL)
def test_pf_layer_count_matches_config(name):
    assert len(parameter_free_layers(create_model(name))) == get_config(name).pf_layers


@pytest.mark.parametrize("alias,name", [("resnet50", "r50"), ("resnet50_max", "r50_max"),
                                        ("resnet50_hybrid", "r50_hybrid")])
def test_authors_names_are_aliases(alias, name):
    assert create_model(alias).pretrained_cfg.name == name


def test_unknown_model_names_the_choices():
    with pytest.raises(PfdeployError, match="unknown model 'r51'.*r50_hybrid"):
        create_model("r51")


def test_bad_override_is_a_user_error():
    with pytest.raises(PfdeployError, match="bad override"):
        create_model("r50", no_such_argument=1)


def test_paper_figures():
    # Paper: R50 25.6M / 4.1G, R50-max 14.2M / 2.2G, R50-hybrid 17.3M / 2.6G, ViT-S-max 4.57G.
    figures = {n: model_summary(n) for n in ("r50", "r50_max", "r50_hybrid")}
    assert round(figures["r50"]["parameters"] / 1e6, 1) == 25.6
    assert round(figures["r50_max"]["macs"] / 1e9, 1) == 2.2
    assert round(figures["r50_hybrid"]["macs"] / 1e9, 1) == 2.6


def test_attention_macs_are_counted_on_request():
    model = create_model("vit_s")
    extra = count_macs(model, (3, 224, 224), attention=True) - count_macs(model, (3, 224, 224))
    assert extra == 12 * 2 * 196 * 196 * 384


@pytest.mark.parametrize("name", ["r50_hybrid", "vit_ti_max", "pit_ti_max"])
def test_small_overrides_build_and_run(name):
    overrides = {
        "r50_hybrid": {"layers": (1, 1, 1, 1), "base_width": 8, "img_size": 64},
        "vit_ti_max": {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2},
        "pit_ti_max": {"img_size": 64, "base_dim": 8},
    }[name]
    model = create_model(name, num_classes=7, **overrides)
    size = overrides["img_size"]
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)
