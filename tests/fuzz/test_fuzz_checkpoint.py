"""Fuzzing `load_checkpoint` (`export --checkpoint`, the torch backend): damaged files and odd contents.

Issue 16: random bytes gave IndexError from the weights-only unpickler (4 % of draws); issue 20: a truncated
zip gave OSError, int/tuple keys AttributeError, float8 or sparse tensors NotImplementedError, a meta
tensor RuntimeError. Every input here must load or be one PfdeployError line.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import strategies as st
from torch import nn

from fuzz.harness import check_reader, fuzz_tests, mutated_bytes
from pfdeploy.models import create_model, load_checkpoint

TINY_R50 = {"layers": (1, 1, 1, 1), "base_width": 8, "img_size": 32}
MODEL = create_model("r50", num_classes=4, **TINY_R50)  # loaded into again and again (strict: all or nothing)
STATE = {k: v.clone() for k, v in MODEL.state_dict().items()}


def _saved(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


ZIP_SEED, LEGACY_SEED = _saved(STATE), _saved(STATE, legacy=True)


def _odd_value(kind: str, value: torch.Tensor):
    return {
        "float8": lambda: value.to(torch.float8_e4m3fn),
        "sparse": lambda: value.reshape(-1).to_sparse(),
        "meta": lambda: torch.empty_like(value, device="meta"),
        "complex": lambda: value.to(torch.complex64),
        "nested": lambda: torch.nested.nested_tensor([value.reshape(-1), value.reshape(-1)[:1]]),
        "wrong shape": lambda: value.reshape(-1)[:1].clone(),
        "nan": lambda: torch.full(value.shape, float("nan")),
        "int": lambda: 7,
        "text": lambda: "weights",
        "list": lambda: [value],
        "bool": lambda: value > 0,
        "float64": lambda: value.double(),
        "half": lambda: value.half(),
        "empty": lambda: torch.empty(0),
    }[kind]()


@st.composite
def odd_checkpoints(draw) -> bytes:
    """The model's state_dict with entries replaced (odd keys, odd tensors), in a wrapper or not."""
    state = dict(STATE)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(STATE)))
        change = draw(st.sampled_from(["value", "int key", "tuple key", "drop", "module."]))
        if change == "value":
            state[key] = _odd_value(draw(st.sampled_from(["float8", "sparse", "meta", "complex", "nested",
                                                          "wrong shape", "nan", "int", "text", "list", "bool",
                                                          "float64", "half", "empty"])), STATE[key])
        elif change == "int key":
            state[draw(st.integers(-5, 5))] = state.pop(key, STATE[key])
        elif change == "tuple key":
            state[(key, 1)] = state.pop(key, STATE[key])
        elif change == "drop":
            state.pop(key, None)
        else:
            state[f"module.{key}"] = STATE[key]
    wrapper = draw(st.sampled_from(["plain", "model", "state_dict", "list", "tensor"]))
    obj = {"plain": state, "model": {"model": state, "epoch": 3}, "state_dict": {"state_dict": state},
           "list": [state], "tensor": torch.zeros(2)}[wrapper]
    return _saved(obj, legacy=draw(st.booleans()))


def _loaded(model) -> None:
    assert isinstance(model, nn.Module) and not model.training


def check(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.pth"
        path.write_bytes(data)
        check_reader("checkpoint", lambda: load_checkpoint(MODEL, path), Path(folder), _loaded)


INPUTS = st.one_of(mutated_bytes(ZIP_SEED), mutated_bytes(LEGACY_SEED), odd_checkpoints())
test_fuzz_checkpoint, test_fuzz_checkpoint_long = fuzz_tests("checkpoint", INPUTS, check)


@pytest.mark.parametrize("seed", [ZIP_SEED, LEGACY_SEED], ids=["zip", "legacy"])
def test_the_seeds_load(seed):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.pth"
        path.write_bytes(seed)
        assert all(torch.equal(a, b) for a, b in zip(load_checkpoint(create_model("r50", num_classes=4, **TINY_R50),
                                                                     path).state_dict().values(), STATE.values(),
                                                     strict=True))
