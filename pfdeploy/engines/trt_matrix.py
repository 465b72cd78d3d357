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

from pfdeploy.errors import PfdeployError, shown
from pfdeploy.limits import MAX_JSON_BYTES, MAX_JSON_DEPTH, is_int, json_depth, read_bytes_within

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
    if not (isinstance(rng, list) and len(rng) == 2 and all(is_int(v) for v in rng) and rng[0] <= rng[1]):
        raise bad(f"opset_range must be [low, high] integers, got {shown(rng)}")
    if not isinstance(data["source"], str):
        raise bad(f"source must be a string, got {shown(data['source'])}")
    for key in ("tensor_types", "rules", "errata"):
        if not _is_strings(data.get(key, [])):
            raise bad(f"{key} must be a list of strings, got {shown(data.get(key))}")
    if not data["tensor_types"]:
        raise bad("tensor_types must be a non-empty list")
    known = frozenset(_type_name(t) for t in data["tensor_types"])
    if not isinstance(data["operators"], dict) or not data["operators"]:
        raise bad("operators must be a non-empty object")
    operators = {}
    for op, row in data["operators"].items():
        if not isinstance(row, dict) or not isinstance(row.get("supported"), bool):
            raise bad(f"operator {op[:60]!r} needs 'supported': true/false")
        types = row.get("types", [])
        if not _is_strings(types):
            raise bad(f"operator {op[:60]!r}: 'types' must be a list of type names")
        unknown = [t for t in types if _type_name(t) not in known]
        if unknown:
            raise bad(f"operator {op[:60]!r} lists type(s) {shown(unknown)} not in tensor_types")
        if not isinstance(row.get("restrictions", ""), str):
            raise bad(f"operator {op[:60]!r}: 'restrictions' must be text")
        operators[op] = OpSupport(row["supported"], frozenset(_type_name(t) for t in types),
                                  row.get("restrictions", ""))
    return OperatorMatrix(version, data["source"], (rng[0], rng[1]), known, tuple(data["rules"]),
                          operators, tuple(data.get("errata", ())), where)


def _is_strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)



def load_matrix(version: str | os.PathLike | None = None) -> OperatorMatrix:
    """The operator table of TensorRT `version` (default DEFAULT_TRT_VERSION), or of a JSON file path."""
    if version is not None and (isinstance(version, os.PathLike) or str(version).endswith(FILE_SUFFIX)):
        path = Path(version)
        text = read_bytes_within(path, "TensorRT operator table", "give a table's JSON file", MAX_JSON_BYTES,
                                 "JSON limit")
        name = path.name
        ver = name[len(FILE_PREFIX):-len(FILE_SUFFIX)] if name.startswith(FILE_PREFIX) else path.stem
        return _parse(text, ver, str(path))
    version = str(version or DEFAULT_TRT_VERSION)
    resource = _data_dir() / f"{FILE_PREFIX}{version}{FILE_SUFFIX}"
    if not resource.is_file():
        raise PfdeployError(f"no TensorRT operator table for version {version!r}; shipped: "
                            f"{', '.join(available_versions()) or 'none'} (add pfdeploy/engines/data/"
                            f"{FILE_PREFIX}{version}{FILE_SUFFIX} to check against it)")
    return _parse(resource.read_text(), version, f"{FILE_PREFIX}{version}{FILE_SUFFIX}")


def _parse(text: str | bytes, version: str, where: str) -> OperatorMatrix:
    """Parse a table's JSON text (UTF-8, at most MAX_JSON_DEPTH deep) and validate it, or raise one line."""
    problem = None
    try:
        data = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start})"
    except RecursionError:
        problem = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError as exc:
        problem = f"not JSON ({str(exc)[:120]})"
    else:
        if json_depth(data) > MAX_JSON_DEPTH:
            problem = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    if problem:
        raise PfdeployError(f"{where} is malformed: {problem}; fix or replace the file")
    return matrix_from_dict(data, version, where)
