"""What Triton needs to know about an artifact: platform, tensors (name, dtype, dims), batch range.

`spec_from_onnx` reads the graph's inputs and outputs with the onnx package; `spec_from_engine`
reads the `<plan>.json` manifest that pfdeploy writes beside every TensorRT engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pfdeploy.errors import PfdeployError
from pfdeploy.limits import is_int

ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
INT32_MAX = 2**31 - 1  # model_config.proto: max_batch_size, count, preferred_batch_size are int32
INT64_MAX = 2**63 - 1  # dims are int64

# onnx.TensorProto element type name -> Triton DataType name (model_config.proto).
TRITON_DTYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FLOAT16": "TYPE_FP16",
    "FLOAT": "TYPE_FP32",
    "DOUBLE": "TYPE_FP64",
    "STRING": "TYPE_STRING",
    "BFLOAT16": "TYPE_BF16",
}
# numpy / TensorRT spellings (engine manifests, GraphTensor dtypes) -> the ONNX names above.
DTYPE_ALIASES = {
    "float32": "FLOAT", "fp32": "FLOAT", "float": "FLOAT", "half": "FLOAT16", "float16": "FLOAT16",
    "fp16": "FLOAT16", "bfloat16": "BFLOAT16", "bf16": "BFLOAT16", "float64": "DOUBLE", "double": "DOUBLE",
    "int8": "INT8", "uint8": "UINT8", "int32": "INT32", "int64": "INT64", "bool": "BOOL", "object": "STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, Triton data type and full shape (-1 for a dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ArtifactSpec:
    """An artifact as Triton sees it.

    `batch_dynamic` is True when axis 0 of every tensor is dynamic, so Triton may batch it;
    `profile` is (min, opt, max) batch of an engine's optimization profile, None for ONNX.
    """

    path: Path
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_dynamic: bool
    profile: tuple[int, int, int] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        """The file name Triton looks for in the version folder."""
        return "model.plan" if self.platform == TENSORRT_PLATFORM else "model.onnx"


def triton_dtype(name: str) -> str:
    """Triton TYPE_* for an ONNX element type name or a numpy/TensorRT dtype spelling."""
    key = DTYPE_ALIASES.get(name.lower().removeprefix("datatype."), name.upper())
    if key not in TRITON_DTYPES:
        supported = sorted(TRITON_DTYPES)
        raise PfdeployError(f"data type {name!r} has no Triton equivalent; supported: {supported}")
    return TRITON_DTYPES[key]


def _tensor_from_graph(tensor) -> TensorSpec:
    """TensorSpec of a pfdeploy._onnxgraph.GraphTensor (-1 for every dimension that is not fixed)."""
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in tensor.dims)
    return TensorSpec(tensor.name, triton_dtype(tensor.dtype), dims)


def _batch_dynamic(tensors: tuple[TensorSpec, ...]) -> bool:
    return all(len(t.shape) >= 1 and t.shape[0] == -1 for t in tensors)


def spec_from_onnx(path: str | Path) -> ArtifactSpec:
    """The ArtifactSpec of an ONNX file (graph inputs that are not initializers, graph outputs)."""
    from pfdeploy._onnxfile import load_onnx
    from pfdeploy._onnxgraph import graph_inputs, graph_outputs

    model = load_onnx(path, external_data=False, fix="run `pfdeploy export` or `pfdeploy deploy` first")
    path = Path(path)
    inputs = tuple(_tensor_from_graph(t) for t in graph_inputs(model))
    outputs = tuple(_tensor_from_graph(t) for t in graph_outputs(model))
    meta = {p.key: p.value for p in model.metadata_props}
    return ArtifactSpec(path, ONNX_PLATFORM, inputs, outputs, _batch_dynamic(inputs + outputs), None, meta)


def _tensor_from_manifest(entry, where: Path) -> TensorSpec:
    """One `io` entry of a manifest: name a string, dtype a string, shape a list of integers each -1
    (dynamic) or 1..int64 max. Anything else is refused: `int()` would read "1234" as [1, 2, 3, 4] and
    3.7 as 3."""
    fix = "rebuild the engine with `pfdeploy build-engine --force`"
    if not isinstance(entry, dict) or not {"name", "dtype", "shape"} <= set(entry):
        raise PfdeployError(f"{where}: manifest tensor entry {entry!r:.80} lacks name/dtype/shape; {fix}")
    name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
    if not isinstance(name, str) or not name:
        raise PfdeployError(f"{where}: manifest tensor name {name!r:.80} is not a non-empty string; {fix}")
    if not isinstance(dtype, str):
        raise PfdeployError(f"{where}: tensor {name!r}: dtype {dtype!r:.80} is not a string; {fix}")
    if not isinstance(shape, list) or not all(is_int(d) and (d == -1 or 1 <= d <= INT64_MAX) for d in shape):
        raise PfdeployError(f"{where}: tensor {name!r}: shape {shape!r:.80} is not a list of integers, each -1 "
                            f"(dynamic) or 1..{INT64_MAX}; {fix}")
    return TensorSpec(name, triton_dtype(dtype), tuple(shape))


def _tensors_from_manifest(entries, where: Path) -> tuple[TensorSpec, ...]:
    if not isinstance(entries, list):
        raise PfdeployError(f"{where}: manifest io entries are not a list; rebuild the engine")
    return tuple(_tensor_from_manifest(e, where) for e in entries)


def _profile_from_manifest(batch, where: Path) -> tuple[int, int, int]:
    """(min, opt, max) of the manifest's `batch`: integers with 1 <= min <= opt <= max <= int32 max."""
    values = [batch.get(k) for k in ("min", "opt", "max")] if isinstance(batch, dict) else None
    if not values or not all(is_int(v) for v in values):
        raise PfdeployError(f"{where}: manifest batch {batch!r:.80} is not integer min/opt/max; rebuild the engine")
    low, opt, high = values
    if not 1 <= low <= opt <= high <= INT32_MAX:
        raise PfdeployError(f"{where}: manifest batch min/opt/max {low}/{opt}/{high} is not 1 <= min <= opt <= max "
                            f"<= {INT32_MAX}; rebuild the engine")
    return low, opt, high


def spec_from_engine(path: str | Path) -> ArtifactSpec:
    """The ArtifactSpec of a TensorRT engine, from its `<plan>.json` manifest (never the plan bytes).

    Needs no TensorRT. The plan must be the one its manifest vouches for (sha256), so a replaced or
    truncated plan is refused before it is copied anywhere. The batch profile comes from the manifest;
    tensor names and dtypes from the manifest's `io` section (written by `pfdeploy build-engine`), or,
    for a manifest without one, from the source ONNX it names, found beside the plan and checked by
    sha256 (a strongly typed engine keeps the ONNX graph's inputs and outputs).
    """
    from pfdeploy.engines.manifest import check_plan_matches, read_manifest
    from pfdeploy.limits import require_regular_file

    path = require_regular_file(path, "engine", "build it with `pfdeploy build-engine`")
    manifest = read_manifest(path)
    check_plan_matches(path, manifest)
    return spec_from_manifest(manifest, path)


def _io_from_source_onnx(manifest: dict, path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    from pfdeploy._io import sha256_file

    source = manifest.get("onnx") or {}
    onnx_path = path.parent / str(source.get("file", ""))
    if not source.get("file") or not onnx_path.is_file():
        raise PfdeployError(
            f"{path}: the manifest records no tensor list and its source ONNX "
            f"{source.get('file')!r} is not beside the engine; copy the ONNX next to the plan"
        )
    if source.get("sha256") and sha256_file(onnx_path) != source["sha256"]:
        raise PfdeployError(
            f"{onnx_path} is not the ONNX this engine was built from (sha256 differs); "
            "rebuild the engine or restore the original ONNX"
        )
    onnx_spec = spec_from_onnx(onnx_path)
    return onnx_spec.inputs, onnx_spec.outputs


def spec_from_manifest(manifest: dict, path: Path) -> ArtifactSpec:
    """ArtifactSpec of the engine at `path` from its manifest dict (see spec_from_engine)."""
    where = Path(str(path) + ".json")
    io = manifest.get("io") or {}
    source = manifest.get("onnx") or {}
    meta = (source.get("metadata") or {}) if isinstance(source, dict) else None
    if not isinstance(io, dict) or not isinstance(meta, dict):
        raise PfdeployError(f"{where}: manifest `io` or `onnx.metadata` is not an object; rebuild the engine")
    if io.get("inputs") and io.get("outputs"):
        inputs = _tensors_from_manifest(io["inputs"], where)
        outputs = _tensors_from_manifest(io["outputs"], where)
    else:
        inputs, outputs = _io_from_source_onnx(manifest, path)
    profile = _profile_from_manifest(manifest.get("batch"), where)
    meta = {str(k): str(v) for k, v in meta.items()}
    dynamic = _batch_dynamic(inputs + outputs)
    return ArtifactSpec(path, TENSORRT_PLATFORM, inputs, outputs, dynamic, profile, meta)


def spec_from_artifact(path: str | Path) -> ArtifactSpec:
    """Dispatch on the suffix: `.onnx` -> spec_from_onnx, `.plan`/`.engine` -> spec_from_engine."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return spec_from_onnx(path)
    if suffix in (".plan", ".engine"):
        return spec_from_engine(path)
    raise PfdeployError(f"{path}: unknown artifact type {suffix!r}; give a .onnx file or a .plan engine")
