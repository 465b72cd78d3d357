"""Small trained models described by a `fixtures.json` (the repo's test fixtures use this).

`scripts/train_fixtures.py` trains narrow members of the family on scikit-learn's digits and
writes `tests/fixtures/trained/fixtures.json`; each entry names the registry model, its
`create_model` overrides, the checkpoint file and the Preprocess its images need (32x32, the
digits' mean/std: not the registry's ImageNet defaults).
"""

from __future__ import annotations

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
    classes: tuple[str, ...] = ()  # the names of the model's outputs, in index order (eval maps folders by them)

    def create(self):
        """The model with its trained weights, in eval mode."""
        from pfdeploy.models import create_model, load_checkpoint

        model = create_model(self.model, num_classes=self.num_classes, **self.overrides)
        load_checkpoint(model, self.checkpoint)
        return model.eval()


FIX = "regenerate it with `python scripts/train_fixtures.py`"


def _index(root: Path) -> dict[str, Any]:
    from pfdeploy.limits import read_json_file

    path = root / "fixtures.json"
    if not path.exists():
        raise PfdeployError(f"no {path}; run `python scripts/train_fixtures.py` in a source checkout")
    index = read_json_file(path, "fixture index", FIX)  # regular file, JSON within the limits
    if not isinstance(index, dict):
        raise PfdeployError(f"{path} holds a {type(index).__name__}, not an object of fixtures; {FIX}")
    return index


def _relative(value: Any) -> bool:
    """A non-empty relative path that stays inside its folder (no `..`)."""
    return isinstance(value, str) and bool(value) and "\0" not in value and not Path(value).is_absolute() and \
        ".." not in Path(value).parts


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one fixture's entry of fixtures.json (None if nothing)."""
    from pfdeploy.limits import MAX_NUM_CLASSES

    if not isinstance(entry, dict):
        return "is not an object"
    if not isinstance(entry.get("model"), str):
        return "model must be a registered model name"
    classes = entry.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= MAX_NUM_CLASSES:
        return f"num_classes must be an integer in 1..{MAX_NUM_CLASSES}"
    if not isinstance(entry.get("overrides"), dict):
        return "overrides must be an object of create_model arguments"
    if not _relative(entry.get("checkpoint")):
        return "checkpoint must be a file name relative to the fixture folder (inside it)"
    if not isinstance(entry.get("preprocess"), dict):
        return "preprocess must be an object"
    data = entry.get("data")
    if not isinstance(data, dict) or not all(_relative(data.get(k)) for k in ("calib", "val")):
        return "data must hold calib and val folders relative to the fixtures' parent folder (inside it)"
    names = data.get("classes")
    if names is not None and (not isinstance(names, list) or len(names) != classes or
                              not all(isinstance(n, str) and n for n in names)):
        return "data.classes must list num_classes class names"
    top1 = (entry.get("fp32_top1") or {}).get("val") if isinstance(entry.get("fp32_top1"), dict) else None
    if not isinstance(top1, (int, float)) or isinstance(top1, bool) or not 0 <= top1 <= 100:
        return "fp32_top1.val must be a percentage"
    return None


def list_fixtures(root: str | Path | None = None) -> list[str]:
    """Names of the trained fixtures in `root` (default: the repository's tests/fixtures/trained)."""
    return sorted(_index(Path(root or DEFAULT_ROOT)))


def get_fixture(name: str, root: str | Path | None = None) -> Fixture:
    """The description of fixture `name`, with absolute paths; an entry of the wrong shape (a value of the
    wrong type, an absolute path, a bad preprocess) is one PfdeployError line naming the field."""
    root = Path(root or DEFAULT_ROOT)
    index = _index(root)
    if name not in index:
        names = [n if n.isprintable() else repr(n) for n in sorted(index)[:10]]
        raise PfdeployError(f"unknown fixture {name!r}; choose one of: {', '.join(names)}")
    entry = index[name]
    problem = _entry_problem(entry)
    if problem:
        raise PfdeployError(f"{root / 'fixtures.json'}: fixture {name!r}: {problem}; {FIX}")
    try:
        preprocess = Preprocess.from_dict(entry["preprocess"])
    except PfdeployError as exc:
        raise PfdeployError(f"{root / 'fixtures.json'}: fixture {name!r}: {exc}; {FIX}") from None
    data_root = root.parent
    return Fixture(
        name=name,
        model=entry["model"],
        num_classes=entry["num_classes"],
        overrides=dict(entry["overrides"]),
        checkpoint=root / entry["checkpoint"],
        preprocess=preprocess,
        calib_dir=data_root / entry["data"]["calib"],
        val_dir=data_root / entry["data"]["val"],
        fp32_top1=float(entry["fp32_top1"]["val"]),
        classes=tuple(entry["data"].get("classes") or (str(i) for i in range(entry["num_classes"]))),
    )


def load_fixture(name: str, root: str | Path | None = None):
    """(model with trained weights, Preprocess) of fixture `name`."""
    fixture = get_fixture(name, root)
    return fixture.create(), fixture.preprocess
