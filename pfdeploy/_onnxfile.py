"""Reading ONNX files: the one loader every stage uses, with errors that say what is wrong.

A missing file, a file that cannot be read (permissions, a directory), a file that is not ONNX or is
truncated, and a file whose initializers hold fewer bytes than their shapes declare each get their
own one-line PfdeployError naming the fix, before ONNX Runtime, TensorRT or Triton see the file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnx
from onnx import TensorProto

from pfdeploy.errors import PfdeployError

EXPORT_FIX = "export one with `pfdeploy export NAME`"
# TensorProto fields that hold typed (not raw) data, by element type.
_TYPED_FIELDS = {
    TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.INT64: "int64_data",
    TensorProto.UINT64: "uint64_data", TensorProto.STRING: "string_data",
}
_INT32_FIELD_TYPES = {TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT16,
                      TensorProto.UINT8, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _expected_bytes(tensor: TensorProto) -> int | None:
    """Bytes `tensor`'s raw data must hold, or None for types without a fixed item size."""
    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    elements = math.prod(tensor.dims)
    if onnx.helper.tensor_dtype_to_string(tensor.data_type).split(".")[-1] in ("INT4", "UINT4", "FLOAT4E2M1"):
        return (elements + 1) // 2  # two 4-bit values per byte
    return elements * itemsize


def _typed_count(tensor: TensorProto) -> int:
    if tensor.data_type in _INT32_FIELD_TYPES:
        return len(tensor.int32_data)
    field = _TYPED_FIELDS.get(tensor.data_type)
    count = len(getattr(tensor, field)) if field else 0
    return count // 2 if tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else count


def tensor_problem(tensor: TensorProto, base: Path) -> str | None:
    """Why an initializer's stored data does not match its declared shape and type (None if it does)."""
    elements = math.prod(tensor.dims)
    if tensor.data_location == TensorProto.EXTERNAL:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = base / info.get("location", "")
        if not info.get("location") or not location.is_file():
            return f"its external data file {info.get('location')!r} is missing"
        expected = _expected_bytes(tensor)
        length = int(info["length"]) if "length" in info else expected
        end = int(info.get("offset", 0)) + (length or 0)
        if expected is not None and length is not None and length < expected:
            return f"its external data holds {length} of {expected} bytes"
        if location.stat().st_size < end:
            return f"its external data file {info['location']} is shorter than declared"
        return None
    if tensor.HasField("raw_data"):
        expected = _expected_bytes(tensor)
        if expected is not None and len(tensor.raw_data) != expected:
            return f"holds {len(tensor.raw_data)} bytes where shape {list(tensor.dims)} needs {expected}"
        return None
    if elements and _typed_count(tensor) != elements:
        return f"holds {_typed_count(tensor)} values where shape {list(tensor.dims)} needs {elements}"
    return None


def check_initializers(model: onnx.ModelProto, path: Path) -> None:
    """Raise a PfdeployError naming the first initializer whose data is shorter or longer than declared."""
    for tensor in model.graph.initializer:
        problem = tensor_problem(tensor, path.parent)
        if problem:
            raise PfdeployError(f"{path} is damaged: initializer {tensor.name!r} {problem}; "
                                "the file was truncated or corrupted, export or copy it again")


def load_onnx(path: str | os.PathLike, *, external_data: bool = True, fix: str = EXPORT_FIX,
              check_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, or raise a one-line PfdeployError saying what is wrong with it and `fix`.

    `external_data=False` reads only the graph (initializers stored outside stay references).
    `check_data` also checks every initializer holds the bytes its shape declares.
    """
    path = Path(path)
    if not path.exists():
        raise PfdeployError(f"ONNX file {path} not found; {fix}")
    if path.is_dir():
        raise PfdeployError(f"{path} is a directory, not an ONNX file; {fix}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:  # permissions, I/O errors: say so, not "not ONNX"
        raise PfdeployError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from exc
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and onnx's errors: not ONNX, or truncated
        raise PfdeployError(f"{path} is not an ONNX model, or is truncated ({type(exc).__name__}); {fix}") from exc
    if not model.graph.node:
        raise PfdeployError(f"{path} is not an ONNX model (its graph is empty); {fix}")
    if check_data:
        check_initializers(model, path)
    if external_data and any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(path.parent))
    return model
