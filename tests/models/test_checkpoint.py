"""load_checkpoint: every wrapper form loads; every bad checkpoint is refused with one clear error."""

from __future__ import annotations

import pickle

import pytest
import torch

from pfdeploy.errors import PfdeployError
from pfdeploy.models import create_model, list_models, load_checkpoint


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("name", list_models())
def test_plain_state_dict_round_trip(name, tmp_path):
    source = create_model(name)
    path = tmp_path / "plain.pth"
    torch.save(source.state_dict(), path)
    target = load_checkpoint(create_model(name), path)
    assert _same_weights(source, target)


WRAPPERS = {
    "plain": lambda sd: sd,
    "model": lambda sd: {"model": sd, "epoch": 3},
    "state_dict": lambda sd: {"state_dict": sd, "optimizer": {"lr": 0.1}},
    "model_ema": lambda sd: {"model_ema": sd},
    "ddp_prefix": lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("name", ["r50_hybrid", "vit_ti_max", "pit_ti_max"])
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_wrapper_round_trip(name, wrapper, tmp_path):
    source = create_model(name)
    path = tmp_path / f"{wrapper}.pth"
    torch.save(WRAPPERS[wrapper](source.state_dict()), path)
    target = load_checkpoint(create_model(name), path)
    assert _same_weights(source, target)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_missing_file(tmp_path):
    with pytest.raises(PfdeployError, match="not found"):
        load_checkpoint(create_model("r50_max"), tmp_path / "nope.pth")


def test_random_bytes(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(PfdeployError, match="not a readable PyTorch checkpoint|refuses"):
        load_checkpoint(create_model("r50_max"), path)


def test_wrong_models_keys_name_the_mismatch_and_suggest(tmp_path):
    path = tmp_path / "r50_max.pth"
    torch.save(create_model("r50_max").state_dict(), path)
    with pytest.raises(PfdeployError) as info:
        load_checkpoint(create_model("r50_hybrid"), path)
    message = str(info.value)
    assert "missing: layer2.0.conv_block.1.0.weight" in message
    assert "look like 'r50_max'" in message
    assert "\n" not in message


def test_wrong_shapes_are_listed(tmp_path):
    path = tmp_path / "ten.pth"
    torch.save(create_model("vit_ti_max", num_classes=10).state_dict(), path)
    with pytest.raises(PfdeployError, match=r"wrong shape: head.weight \(10, 192\) vs \(1000, 192\)"):
        load_checkpoint(create_model("vit_ti_max"), path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_run_code_is_refused_and_nothing_ran(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"model": _RunsCode(marker)}, f, pickle_module=pickle)
    with pytest.raises(PfdeployError, match="weights_only"):
        load_checkpoint(create_model("r50_max"), path)
    assert not marker.exists()


def test_checkpoint_without_state_dict(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "acc": 0.5}, path)
    with pytest.raises(PfdeployError, match="holds no state_dict"):
        load_checkpoint(create_model("r50_max"), path)


def test_pos_embed_is_resized_for_another_image_size(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(create_model("vit_ti_max").state_dict(), path)
    model = load_checkpoint(create_model("vit_ti_max", img_size=256), path)
    assert model.pos_embed.shape == (1, 256, 192)
