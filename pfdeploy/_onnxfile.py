"""Reading ONNX files: the one loader every stage uses, with errors that say what is wrong.

A missing file, a file that cannot be read (permissions, a directory), a file that is not ONNX or is
truncated, and a file whose initializers hold fewer bytes than their shapes declare each get their
own one-line PfdeployError naming the fix, before ONNX Runtime, TensorRT or Triton see the file.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from onnx import TensorProto

from pfdeploy._onnxgraph import graphs_of
from pfdeploy.errors import PfdeployError
from pfdeploy.limits import require_regular_file

EXPORT_FIX = "export one with `pfdeploy export NAME`"
# TensorProto fields that hold typed (not raw) data, by element type.
_TYPED_FIELDS = {
    TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.INT64: "int64_data",
    TensorProto.UINT64: "uint64_data", TensorProto.STRING: "string_data",
}


def _has_numpy_type(data_type: int) -> bool:
    try:
        onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return False
    return True


#: The element types this onnx knows (UNDEFINED and values outside the enum are neither).
_KNOWN_TYPES = frozenset(t for t in TensorProto.DataType.values() if t != TensorProto.UNDEFINED and _has_numpy_type(t))
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


PROTOBUF_LIMIT = 2**31  # bytes: no serialized ONNX graph (its external data aside) is larger
EXTERNAL_FIX = ("external data must be a relative path to a regular file inside the model's folder (onnx's rule); "
                "re-save the model with onnx.save(model, path, save_as_external_data=True)")
_DIGITS = re.compile(r"[0-9]{1,19}")


def _external_info(tensor: TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def external_location_problem(tensor: TensorProto, base: Path) -> str | None:
    """Why the external data that `tensor` names cannot be read safely (None if it can): it names no file,
    an absolute path, one outside `base` (the model's folder, also through a symlink) or one that is not a
    regular file (a FIFO would block), or its offset/length are not non-negative integers. A missing file is
    left to `tensor_problem` (a damaged copy, not a hostile path)."""
    info = _external_info(tensor)
    location = info.get("location", "")
    shown = repr(location[:120])
    if not location:
        return "names no external data file"
    if "\0" in location or os.path.isabs(location) or PureWindowsPath(location).drive or location.startswith("\\"):
        return f"has external data at {shown}, an absolute path"
    for key in ("offset", "length"):
        if key in info and not _DIGITS.fullmatch(info[key]):
            return f"has an external data {key} of {info[key][:40]!r}, not a non-negative integer"
    target = base / location
    try:
        inside = target.resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the file system refuses
        return f"has external data at {shown}, which cannot be resolved"
    if ".." in PurePosixPath(location.replace("\\", "/")).parts or not inside:
        return f"has external data at {shown}, outside the model's folder"
    try:
        mode = target.stat().st_mode
    except OSError:
        return None  # missing: a damaged copy, which tensor_problem names
    if not stat.S_ISREG(mode):
        return f"has external data at {shown}, which is not a regular file"
    return None


def tensor_problem(tensor: TensorProto, base: Path) -> str | None:
    """Why an initializer's stored data does not match its declared shape and type (None if it does)."""
    elements = math.prod(tensor.dims)
    if tensor.data_location == TensorProto.EXTERNAL:
        problem = external_location_problem(tensor, base)
        if problem:
            return problem
        info = _external_info(tensor)
        location = base / info["location"]
        if not location.is_file():
            return f"its external data file {info['location']!r} is missing"
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


def _non_text(message, where: str = "the model") -> str | None:
    """The first string field under a protobuf message (names, op types, attribute names, doc strings, at any
    depth: subgraphs too) that is not UTF-8 text, as 'where (bytes)', or None. protobuf hands Python such a
    field as bytes, and ONNX Runtime fails decoding it."""
    from google.protobuf.descriptor import FieldDescriptor

    stack = [(message, where)]
    while stack:
        current, place = stack.pop()
        if isinstance(current, TensorProto):  # its names only: listing its fields would copy raw_data
            for text in (current.name, current.doc_string, *(e.key for e in current.external_data),
                         *(e.value for e in current.external_data)):
                if not isinstance(text, str):
                    return f"{place} ({bytes(text)[:40]!r})"
            continue
        for field, value in current.ListFields():
            label = f"{place}.{field.name}"
            repeated = field.is_repeated if hasattr(field, "is_repeated") else \
                field.label == FieldDescriptor.LABEL_REPEATED  # `label` is deprecated from protobuf 6.32
            values = value if repeated else [value]
            if field.type == FieldDescriptor.TYPE_STRING:
                bad = next((v for v in values if not isinstance(v, str)), None)
                if bad is not None:
                    return f"{label} ({bytes(bad)[:40]!r})"
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                stack.extend((v, label) for v in values)
    return None


TYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")  # integer attributes that name an element type (Cast, ...)


def _elem_types(type_proto: onnx.TypeProto):
    """The element types a TypeProto names (a tensor's, a sequence's or map's elements, an optional's)."""
    which = type_proto.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        yield getattr(type_proto, which).elem_type
    elif which == "sequence_type":
        yield from _elem_types(type_proto.sequence_type.elem_type)
    elif which == "optional_type":
        yield from _elem_types(type_proto.optional_type.elem_type)
    elif which == "map_type":
        yield type_proto.map_type.key_type
        yield from _elem_types(type_proto.map_type.value_type)


def _types_problem(model: onnx.ModelProto) -> str | None:
    for graph in graphs_of(model.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            if any(t and t not in _KNOWN_TYPES for t in _elem_types(value.type)):
                return f"value {value.name[:80]!r} has an element type ONNX does not define"
        tensors = [(f"initializer {t.name[:80]!r}", t) for t in graph.initializer]
        for node in graph.node:
            for attr in node.attribute:
                where = f"node {node.name[:60]!r} attribute {attr.name[:40]!r}"
                if attr.name in TYPE_ATTRIBUTES and attr.type == onnx.AttributeProto.INT and attr.i not in _KNOWN_TYPES:
                    return f"{where} names element type {attr.i}, which ONNX does not define"
                tensors += [(where, t) for t in ([attr.t] if attr.HasField("t") else [])] + \
                    [(where, t) for t in attr.tensors]
        for where, tensor in tensors:
            if tensor.data_type not in _KNOWN_TYPES:
                return f"{where} has element type {tensor.data_type}, which ONNX does not define"
            if any(d < 0 for d in tensor.dims):
                return f"{where} has a negative dimension {list(tensor.dims)[:8]}"
    return None


def text_problem(model: onnx.ModelProto) -> str | None:
    """What makes the model unreadable to its consumers although protobuf parsed it (None if nothing): a name
    that is not UTF-8 text (protobuf then hands Python bytes, and ONNX Runtime fails decoding it), an element
    type ONNX does not define (a graph input's, an initializer's, a Cast's `to`), a negative dimension."""
    where = _non_text(model)
    if where:
        return f"a name or text is not UTF-8: {where}"
    return _types_problem(model)


def checker_problem(model: onnx.ModelProto) -> str | None:
    """onnx.checker's objection to the graph's structure (None if none): checked on a copy whose initializers
    hold no data, so it costs milliseconds whatever the model's size (node inputs defined and in order, the
    inputs and attributes each op's schema wants). OpenVINO's frontend crashes on some graphs it refuses."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                               model_version=model.model_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.metadata_props.extend(model.metadata_props)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for tensor in model.graph.initializer:
        graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=[0])
    try:
        onnx.checker.check_model(skeleton)
    except Exception as exc:  # noqa: BLE001 - onnx.checker.ValidationError and the C++ checker's errors
        text = str(exc).strip()
        return text.splitlines()[0][:200] if text else type(exc).__name__
    return None


def _external(model: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]


def check_external_locations(model: onnx.ModelProto, path: Path) -> None:
    """Raise a PfdeployError naming the first initializer whose external data location is unsafe or unusable
    (see `external_location_problem`): never read or copy a host file the model points at."""
    for tensor in _external(model):
        problem = external_location_problem(tensor, path.parent)
        if problem:
            raise PfdeployError(f"{path}: initializer {tensor.name[:80]!r} {problem}; {EXTERNAL_FIX}")


def check_initializers(model: onnx.ModelProto, path: Path) -> None:
    """Raise a PfdeployError naming the first initializer whose data is shorter or longer than declared."""
    check_external_locations(model, path)
    for tensor in model.graph.initializer:
        problem = tensor_problem(tensor, path.parent)
        if problem:
            raise PfdeployError(f"{path} is damaged: initializer {tensor.name[:80]!r} {problem}; "
                                "the file was truncated or corrupted, export or copy it again")


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The files holding the external initializers of the ONNX file `path` (empty for a self-contained
    model), each checked to be a regular file inside the model's folder: what `pfdeploy triton` copies."""
    path = Path(path)
    model = load_onnx(path, external_data=False, check_data=False)  # checks the locations
    files = [path.parent / location for location in sorted({_external_info(t)["location"] for t in _external(model)})]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise PfdeployError(f"{path}: its external data file {missing[0]!r} is missing; copy it next to the model")
    return files


def load_onnx(path: str | os.PathLike, *, external_data: bool = True, fix: str = EXPORT_FIX,
              check_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, or raise a one-line PfdeployError saying what is wrong with it and `fix`.

    `external_data=False` reads only the graph (initializers stored outside stay references).
    `check_data` also checks every initializer holds the bytes its shape declares. A FIFO or device is
    refused before it is opened, and external data locations are always checked (relative, inside the
    model's folder, regular files), whatever `check_data` says.
    """
    path = Path(path)
    if path.is_dir():
        raise PfdeployError(f"{path} is a directory, not an ONNX file; {fix}")
    require_regular_file(path, "ONNX file", fix)
    try:
        size = path.stat().st_size
        if size >= PROTOBUF_LIMIT:
            raise PfdeployError(f"{path} is {size} bytes, larger than any ONNX graph (protobuf's 2 GiB); {fix}")
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
    if not model.graph.output:
        raise PfdeployError(f"{path} is not a usable ONNX model (its graph has no outputs); {fix}")
    problem = text_problem(model)
    if problem:
        raise PfdeployError(f"{path} is damaged: {problem}; {fix}")
    if check_data:
        check_initializers(model, path)
    else:
        check_external_locations(model, path)
    if external_data and _external(model):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # noqa: BLE001 - onnx's ValidationError, ValueError, OSError on a hostile file
            raise PfdeployError(f"{path}: its external data cannot be read ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); {EXTERNAL_FIX}") from None
    return model
