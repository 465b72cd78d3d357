"""load_checkpoint: every wrapper form loads; every bad checkpoint is refused with one clear error."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch

from pfdeploy.errors import PfdeployError
from pfdeploy.models import create_model, list_models, load_checkpoint

TINY_R50 = {"layers": (1, 1, 1, 1), "base_width": 8, "img_size": 32}


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


NOT_READABLE = "is not a readable PyTorch checkpoint (damaged, truncated or another format)"


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes(tmp_path, seed):
    """Seeded: random files (some start like a zip) are one line saying the file is no checkpoint, never
    the weights-only message (issue 16: 4 % of unseeded draws gave IndexError)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"PK\x03\x04" + data if seed % 4 == 0 else data)
    with pytest.raises(PfdeployError, match=re.escape(NOT_READABLE)) as err:
        load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), path)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)


def test_truncated_zip_and_damaged_pickle_say_not_readable(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(create_model("r50", num_classes=4, **TINY_R50).state_dict(), good)
    data = good.read_bytes()
    for size in (10, 100, 3000, len(data) // 2, len(data) - 30):  # OSError, RuntimeError, ... today
        cut = tmp_path / f"cut{size}.pth"
        cut.write_bytes(data[:size])
        with pytest.raises(PfdeployError, match=re.escape(NOT_READABLE)):
            load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), cut)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    damaged = bytearray(legacy.read_bytes())
    damaged[2:40] = bytes(range(38))  # the pickle's opcodes, overwritten
    legacy.write_bytes(bytes(damaged))
    with pytest.raises(PfdeployError, match=re.escape(NOT_READABLE)) as err:
        load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), legacy)
    assert "weights_only" not in str(err.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_fifo_checkpoint_is_refused_not_opened(tmp_path):
    fifo = tmp_path / "w.pth"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    with pytest.raises(PfdeployError, match="is a FIFO, not a regular file"):
        load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), fifo)


def _odd_state(change):
    state = create_model("r50", num_classes=4, **TINY_R50).state_dict()
    change(state)
    return state


@pytest.mark.parametrize("change, message", [
    (lambda s: s.__setitem__(5, torch.zeros(1)), "checkpoint key 5 is a int, not a parameter name"),
    (lambda s: s.__setitem__(("fc", 1), torch.zeros(1)), "checkpoint key ('fc', 1) is a tuple, not a parameter name"),
    (lambda s: s.__setitem__("fc.\nbias", torch.zeros(1)), "holds control characters"),  # a 2-line error (fuzz)
    (lambda s: s.__setitem__("fc.bias", s["fc.bias"].to(torch.float8_e4m3fn)), "fc.bias is float8_e4m3fn"),
    (lambda s: s.__setitem__("fc.weight", s["fc.weight"].to_sparse()), "fc.weight is a sparse_coo tensor"),
    (lambda s: s.__setitem__("fc.bias", torch.empty(4, device="meta")), "fc.bias is on the meta device"),
    (lambda s: s.__setitem__("fc.bias", s["fc.bias"].to(torch.complex64)), "fc.bias is complex64"),
])
def test_odd_keys_and_tensor_kinds_are_one_line(tmp_path, change, message):
    """int/tuple keys gave AttributeError, float8/sparse NotImplementedError, meta RuntimeError (issue 20)."""
    path = tmp_path / "odd.pth"
    torch.save(_odd_state(change), path)
    with pytest.raises(PfdeployError, match=re.escape(message)) as err:
        load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), path)
    assert "\n" not in str(err.value)


def test_pos_embed_of_a_non_square_grid_is_a_shape_mismatch_not_a_crash(tmp_path):
    state = create_model("vit_ti_max", img_size=32, patch_size=16, depth=2).state_dict()
    state["pos_embed"] = torch.zeros(1, 3, 192)  # 3 tokens: no square grid to resize
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    with pytest.raises(PfdeployError, match=r"wrong shape: pos_embed \(1, 3, 192\) vs \(1, 4, 192\)"):
        load_checkpoint(create_model("vit_ti_max", img_size=32, patch_size=16, depth=2), path)


def test_a_real_pickle_with_a_refused_global_keeps_the_weights_only_message(tmp_path):
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": _RunsCode(tmp_path / "pwned")}, f, protocol=2)  # plain pickle, not torch.save
    with pytest.raises(PfdeployError, match=r"weights_only loading refuses \(it names (io\.)?open\)"):
        load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), path)
    assert not (tmp_path / "pwned").exists()


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


def _saved(tmp_path, change=None, model=None):
    """Save a tiny r50's state_dict after `change(state)`; return the path."""
    state = (model or create_model("r50", num_classes=4, **TINY_R50)).state_dict()
    if change is not None:
        change(state)
    path = tmp_path / "changed.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("key, value, message", [
    ("conv1.0.weight", float("nan"), "conv1.0.weight holds 1 NaN/Inf value"),
    ("fc.bias", float("inf"), "fc.bias holds 1 NaN/Inf value"),
    ("conv1.1.running_mean", float("-inf"), "conv1.1.running_mean holds 1 NaN/Inf value"),
    ("conv1.1.running_var", -0.5, "conv1.1.running_var holds negative variances (min -0.5)"),
])
def test_non_finite_weights_and_negative_variances_are_refused(tmp_path, key, value, message):
    def poison(state):
        state[key].view(-1)[0] = value

    path = _saved(tmp_path, poison)
    with pytest.raises(PfdeployError) as err:
        load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), path)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.bool, torch.uint8])
def test_integer_or_bool_tensors_for_floating_weights_are_refused(tmp_path, dtype):
    def to_integer(state):
        state["conv1.0.weight"] = (state["conv1.0.weight"] * 100).to(dtype)

    path = _saved(tmp_path, to_integer)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(PfdeployError, match=f"conv1.0.weight is {name} where the model has float32"):
        load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), path)


def test_precision_losing_casts_are_stated_and_integer_buffers_still_load(tmp_path, caplog):
    source = create_model("r50", num_classes=4, **TINY_R50)
    exact = _saved(tmp_path, lambda s: s.update({k: v.double() for k, v in s.items() if v.is_floating_point()}),
                   model=source)
    with caplog.at_level("WARNING"):
        target = load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), exact)
    assert "lose precision" not in caplog.text  # float32 values stored as float64: nothing lost
    assert _same_weights(source, target)
    assert target.state_dict()["conv1.1.num_batches_tracked"].dtype == torch.int64

    def finer(state):
        state["fc.weight"] = state["fc.weight"].double() + 1e-12

    lossy = _saved(tmp_path, finer)
    with caplog.at_level("WARNING"):
        load_checkpoint(create_model("r50", num_classes=4, **TINY_R50), lossy)
    assert "1 float64 tensor(s) (fc.weight, ...) lose precision as float32" in caplog.text
    caplog.clear()
    half = create_model("r50", num_classes=4, **TINY_R50).half()
    with caplog.at_level("WARNING"):
        load_checkpoint(half, _saved(tmp_path))
    assert "float32 tensor(s)" in caplog.text and "lose precision as float16" in caplog.text
    too_big = _saved(tmp_path, lambda s: s["fc.weight"].view(-1).__setitem__(0, 1e6))
    with pytest.raises(PfdeployError, match="fc.weight holds values beyond the range of float16"):
        load_checkpoint(create_model("r50", num_classes=4, **TINY_R50).half(), too_big)
