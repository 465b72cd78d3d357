"""TensorRT's documented ONNX operator support, as data: one JSON file per TensorRT release.

The tables live in `pfdeploy/engines/data/onnx-tensorrt-operators-<version>.json`, transcribed from
onnx-tensorrt's docs/operators.md of that release (each file names its source). To add a newer
TensorRT, drop its table there under that name: `load_matrix("<version>")` and
`pfdeploy check-trt --trt-version <version>` pick it up; `load_matrix` validates it (the keys below,
type names from `tensor_types`) and names the first problem. No TensorRT is imported here.

File format: {"tensorrt_version", "source", "opset_range": [lo, hi], "tensor_types": [...],
"rules": [text], "errata": [text] (optional: corrections made while transcribing),
"operators": {op: {"supported": bool, "types": [...], "restrictions": text}}}.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pfdeploy.errors import PfdeployError

#: The table the checks use unless told otherwise (the one DESIGN.md names; pfdeploy targets TensorRT 10/11).
DEFAULT_TRT_VERSION = "10.1"
FILE_PREFIX, FILE_SUFFIX = "onnx-tensorrt-operators-", ".json"
REQUIRED_KEYS = ("source", "opset_range", "tensor_types", "rules", "operators")


@dataclass(frozen=True)
class OpSupport:
    """One operator row: supported or not, its supported tensor types, its restrictions text."""

    supported: bool
    types: frozenset[str]
    restrictions: str = ""


@dataclass(frozen=True)
class OperatorMatrix:
    """One TensorRT release's ONNX operator support table (see module docstring)."""

    version: str
    source: str
    opset_range: tuple[int, int]
    tensor_types: frozenset[str]
    rules: tuple[str, ...]
    operators: dict[str, OpSupport] = field(repr=False)
    errata: tuple[str, ...] = ()
    path: str = ""

    def op(self, op_type: str) -> OpSupport | None:
        """The row of `op_type`, or None when the table does not list it."""
        return self.operators.get(op_type)


def _data_dir():
    return resources.files("pfdeploy.engines") / "data"


def available_versions() -> list[str]:
    """TensorRT versions with a shipped table, oldest first."""
    names = [p.name for p in _data_dir().iterdir() if p.name.startswith(FILE_PREFIX) and p.name.endswith(FILE_SUFFIX)]
    versions = [n[len(FILE_PREFIX):-len(FILE_SUFFIX)] for n in names]
    return sorted(versions, key=lambda v: tuple(int(x) if x.isdigit() else x for x in re.split(r"[.]", v)))


def _type_name(name: str) -> str:
    return name.split(" (")[0].strip()  # "DOUBLE (limited)" -> "DOUBLE"


def matrix_from_dict(data: dict, version: str, where: str = "") -> OperatorMatrix:
    """Validate a parsed table and build the OperatorMatrix; PfdeployError names the first problem."""
    label = where or f"TensorRT {version} operator table"

    def bad(problem: str) -> PfdeployError:
        return PfdeployError(f"{label} is malformed: {problem}; see pfdeploy/engines/trt_matrix.py for the format")

    if not isinstance(data, dict):
        raise bad("not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    declared = data.get("tensorrt_version")
    if declared is not None and str(declared) != version:
        raise bad(f"it says tensorrt_version {declared!r}, its file name says {version!r}")
    rng = data["opset_range"]
    if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, int) for v in rng) and rng[0] <= rng[1]):
        raise bad(f"opset_range must be [low, high] integers, got {rng!r}")
    if not isinstance(data["tensor_types"], list) or not data["tensor_types"]:
        raise bad("tensor_types must be a non-empty list")
    known = frozenset(_type_name(t) for t in data["tensor_types"])
    if not isinstance(data["operators"], dict) or not data["operators"]:
        raise bad("operators must be a non-empty object")
    operators = {}
    for op, row in data["operators"].items():
        if not isinstance(row, dict) or not isinstance(row.get("supported"), bool):
            raise bad(f"operator {op!r} needs 'supported': true/false")
        types = row.get("types", [])
        if not isinstance(types, list):
            raise bad(f"operator {op!r}: 'types' must be a list")
        unknown = [t for t in types if _type_name(str(t)) not in known]
        if unknown:
            raise bad(f"operator {op!r} lists type(s) {unknown} not in tensor_types")
        operators[op] = OpSupport(row["supported"], frozenset(_type_name(t) for t in types),
                                  str(row.get("restrictions", "")))
    return OperatorMatrix(version, str(data["source"]), (rng[0], rng[1]), known, tuple(map(str, data["rules"])),
                          operators, tuple(map(str, data.get("errata", ()))), where)


def load_matrix(version: str | os.PathLike | None = None) -> OperatorMatrix:
    """The operator table of TensorRT `version` (default DEFAULT_TRT_VERSION), or of a JSON file path."""
    if version is not None and (isinstance(version, os.PathLike) or str(version).endswith(FILE_SUFFIX)):
        path = Path(version)
        if not path.is_file():
            raise PfdeployError(f"TensorRT operator table {path} not found")
        name = path.name
        ver = name[len(FILE_PREFIX):-len(FILE_SUFFIX)] if name.startswith(FILE_PREFIX) else path.stem
        return _parse(path.read_text(), ver, str(path))
    version = str(version or DEFAULT_TRT_VERSION)
    resource = _data_dir() / f"{FILE_PREFIX}{version}{FILE_SUFFIX}"
    if not resource.is_file():
        raise PfdeployError(f"no TensorRT operator table for version {version!r}; shipped: "
                            f"{', '.join(available_versions()) or 'none'} (add pfdeploy/engines/data/"
                            f"{FILE_PREFIX}{version}{FILE_SUFFIX} to check against it)")
    return _parse(resource.read_text(), version, f"{FILE_PREFIX}{version}{FILE_SUFFIX}")


def _parse(text: str, version: str, where: str) -> OperatorMatrix:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PfdeployError(f"{where} is malformed: not JSON ({exc}); fix or replace the file") from None
    return matrix_from_dict(data, version, where)
