"""The committed trained fixtures are what scripts/train_fixtures.py recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pfdeploy._io import sha256_file
from pfdeploy.calibration import load_labeled
from pfdeploy.calibration.fixtures import DEFAULT_ROOT, get_fixture, list_fixtures, load_fixture
from pfdeploy.errors import PfdeployError

DIGITS = DEFAULT_ROOT.parent / "digits"


@pytest.mark.parametrize("name", list_fixtures())
def test_fixture_weights_reproduce_recorded_accuracy(name):
    fx = get_fixture(name)
    entry = json.loads((DEFAULT_ROOT / "fixtures.json").read_text())[name]
    assert sha256_file(fx.checkpoint) == entry["checkpoint_sha256"]
    assert fx.checkpoint.stat().st_size < 2_000_000
    model, pre = load_fixture(name)
    assert pre.size == 32 and pre.crop_pct == 1.0 and model.img_size == 32
    x, y, _ = load_labeled(fx.val_dir, pre)
    with torch.no_grad():
        acc = 100.0 * float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert acc == pytest.approx(fx.fp32_top1, abs=0.01) and acc > 95.0


def test_digit_splits_are_disjoint_and_small():
    def ids(split: str) -> set[str]:
        return {p.stem for p in (DIGITS / split).rglob("*.png")}

    calib, val = ids("calib"), ids("val")
    assert len(calib) >= 200 and len(val) >= 300 and not calib & val
    assert sum(p.stat().st_size for p in DIGITS.rglob("*.png")) < 2_000_000


def test_unknown_fixture_is_one_clear_error(tmp_path: Path):
    with pytest.raises(PfdeployError, match="unknown fixture"):
        get_fixture("nope")
    with pytest.raises(PfdeployError, match="train_fixtures.py"):
        list_fixtures(tmp_path)
