"""Small trained models described by a `fixtures.json` (the repo's test fixtures use this).

`scripts/train_fixtures.py` trains narrow members of the family on scikit-learn's digits and
writes `tests/fixtures/trained/fixtures.json`; each entry names the registry model, its
`create_model` overrides, the checkpoint file and the Preprocess its images need (32x32, the
digits' mean/std: not the registry's ImageNet defaults).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfdeploy.calibration.preprocess import Preprocess
from pfdeploy.errors import PfdeployError

# Where the repository keeps them (present in a source checkout, not in an installed wheel).
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "trained"


@dataclass(frozen=True)
class Fixture:
    """One trained fixture: how to rebuild the model and feed it images."""

    name: str
    model: str
    num_classes: int
    overrides: dict[str, Any]
    checkpoint: Path
    preprocess: Preprocess
    calib_dir: Path
    val_dir: Path
    fp32_top1: float

    def create(self):
        """The model with its trained weights, in eval mode."""
        from pfdeploy.models import create_model, load_checkpoint

        model = create_model(self.model, num_classes=self.num_classes, **self.overrides)
        load_checkpoint(model, self.checkpoint)
        return model.eval()


def _index(root: Path) -> dict[str, Any]:
    path = root / "fixtures.json"
    if not path.is_file():
        raise PfdeployError(f"no {path}; run `python scripts/train_fixtures.py` in a source checkout")
    return json.loads(path.read_text())


def list_fixtures(root: str | Path | None = None) -> list[str]:
    """Names of the trained fixtures in `root` (default: the repository's tests/fixtures/trained)."""
    return sorted(_index(Path(root or DEFAULT_ROOT)))


def get_fixture(name: str, root: str | Path | None = None) -> Fixture:
    """The description of fixture `name`, with absolute paths."""
    root = Path(root or DEFAULT_ROOT)
    index = _index(root)
    if name not in index:
        raise PfdeployError(f"unknown fixture {name!r}; choose one of: {', '.join(sorted(index))}")
    entry = index[name]
    data_root = root.parent
    return Fixture(
        name=name,
        model=entry["model"],
        num_classes=int(entry["num_classes"]),
        overrides=dict(entry["overrides"]),
        checkpoint=root / entry["checkpoint"],
        preprocess=Preprocess.from_dict(entry["preprocess"]),
        calib_dir=data_root / entry["data"]["calib"],
        val_dir=data_root / entry["data"]["val"],
        fp32_top1=float(entry["fp32_top1"]["val"]),
    )


def load_fixture(name: str, root: str | Path | None = None):
    """(model with trained weights, Preprocess) of fixture `name`."""
    fixture = get_fixture(name, root)
    return fixture.create(), fixture.preprocess
