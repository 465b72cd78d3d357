"""Triton `config.pbtxt` from an ArtifactSpec: a plain dict, then protobuf text format.

`config_from_spec` decides the contents (batching, instance groups, CUDA graphs for engines,
Triton's OpenVINO backend for ONNX files served with `backend="openvino"`);
`pbtxt_from_config` only renders the dict. The result parses into Triton's ModelConfig protobuf
(see `pfdeploy.triton.validate`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pfdeploy.errors import PfdeployError
from pfdeploy.limits import MAX_BATCH
from pfdeploy.triton.spec import INT32_MAX, TENSORRT_PLATFORM, ArtifactSpec

DEVICES = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
DEFAULT_ONNX_MAX_BATCH = 32
#: How Triton runs an .onnx file: its ONNX Runtime backend (platform onnxruntime_onnx) or its OpenVINO one.
SERVING_BACKENDS = ("onnxruntime", "openvino")
OPENVINO_BACKEND = "openvino"  # ArtifactSpec.platform of an ONNX file served by Triton's OpenVINO backend
UINT64_MAX = 2**64 - 1  # model_config.proto: max_queue_delay_microseconds is a uint64
#: A Triton model name is one plain folder name in the repository: no path separators, not `.`/`..`, no
#: leading dot (hidden) or dash (read as an option by shell tools), printable ASCII only, at most 128 long.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class Enum(str):
    """A protobuf enum value (TYPE_FP32, KIND_GPU): written bare. Every other string is quoted and escaped."""


@dataclass(frozen=True)
class TritonOptions:
    """How the model is served: batching, instances, device, queue delay."""

    max_batch: int | None = None  # None: the engine profile's max, or 32 for dynamic-batch ONNX
    instances: int = 1
    dynamic_batching: bool = False
    preferred_batch: tuple[int, ...] | None = None  # None: chosen from the profile / max batch
    queue_delay_us: int = 100
    device: str = "auto"  # auto: GPU for engines, KIND_AUTO (GPU when present) for ONNX
    cuda_graphs: bool = True  # engines only


def check_model_name(name: str, fix: str = "give a plain name such as r50_int8") -> str:
    """`name` if it is a plain Triton model name (MODEL_NAME), else a one-line PfdeployError: a name such
    as `../x`, `/abs`, `a/b` or `.` would put the model outside the repository or nest it inside."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or name in (".", ".."):
        raise PfdeployError(f"{name!r} is not a Triton model name (letters, digits, _ . -, not starting "
                            f"with . or -, at most 128 characters: one folder in --repo); {fix}")
    return name


def model_name_for(spec: ArtifactSpec) -> str:
    """Triton model name: the file stem with dots and odd characters as `_`, `_trt` for engines.
    A stem that gives no plain name (one too long) is refused: name the model with --name."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", spec.path.stem).strip("_-") or "model"
    suffix = {TENSORRT_PLATFORM: "_trt", OPENVINO_BACKEND: "_openvino"}.get(spec.platform, "")
    return check_model_name(stem + suffix, f"the name comes from the file name {spec.path.name!r}: "
                                           "give one with --name")


def openvino_parameters(instances: int) -> list[dict]:
    """Parameters of Triton's OpenVINO backend: one stream per model instance; one instance runs with
    PERFORMANCE_HINT LATENCY (every core on each request, as pfdeploy's openvino runtime does), several
    with THROUGHPUT (the backend's documented throughput setup: streams = instances)."""
    values = {"NUM_STREAMS": str(instances), "PERFORMANCE_HINT": "LATENCY" if instances == 1 else "THROUGHPUT"}
    return [{"key": key, "value": {"string_value": value}} for key, value in values.items()]


def resolve_max_batch(spec: ArtifactSpec, requested: int | None) -> int:
    """max_batch_size for Triton: 0 for a fixed-batch artifact, bounded by an engine's profile."""
    if requested is not None and not 0 <= requested <= INT32_MAX:
        raise PfdeployError(f"--max-batch must be 0..{INT32_MAX} (Triton's max_batch_size is an int32), got "
                            f"{requested}")
    if not spec.batch_dynamic:
        if requested:
            raise PfdeployError(
                f"{spec.path}: axis 0 is not a dynamic batch axis, so Triton cannot batch it; "
                "use --max-batch 0 or re-export with a dynamic batch"
            )
        return 0
    if spec.profile is not None:
        low, _opt, high = spec.profile
        if requested is None:
            return high
        if requested and not low <= requested <= high:
            raise PfdeployError(
                f"{spec.path}: --max-batch {requested} is outside the engine's batch profile "
                f"{low}..{high}; rebuild the engine with a larger profile or lower --max-batch"
            )
        return requested
    if requested is not None and requested > MAX_BATCH:
        raise PfdeployError(f"{spec.path}: --max-batch {requested} is over the largest batch a dynamic ONNX batch "
                            f"declares in pfdeploy (1..{MAX_BATCH}); use --max-batch {MAX_BATCH} or less")
    return DEFAULT_ONNX_MAX_BATCH if requested is None else requested


def preferred_batch_sizes(spec: ArtifactSpec, max_batch: int, requested: tuple[int, ...] | None) -> list[int]:
    """Preferred dynamic-batch sizes: the requested ones, else the engine's opt and max batch,
    else half the max batch and the max batch (ONNX)."""
    if requested:
        bad = [b for b in requested if not 1 <= b <= max_batch]
        if bad:
            raise PfdeployError(f"preferred batch sizes {bad} are outside 1..{max_batch} (the max batch)")
        return sorted(set(requested))
    if spec.profile is not None:
        return sorted({b for b in (spec.profile[1], max_batch) if 1 <= b <= max_batch})
    return sorted({max(1, max_batch // 2), max_batch})


def _tensor_entry(tensor, batched: bool) -> dict:
    dims = list(tensor.shape[1:] if batched else tensor.shape)
    entry = {"name": tensor.name, "data_type": Enum(tensor.dtype), "dims": dims or [1]}
    if not dims:  # Triton wants at least one dim: a per-sample scalar is [1] reshaped to []
        entry["reshape"] = {"shape": []}
    return entry


def config_from_spec(spec: ArtifactSpec, name: str, options: TritonOptions | None = None) -> dict:
    """The ModelConfig of one artifact as a dict (field names as in Triton's model_config.proto)."""
    options = options or TritonOptions()
    check_model_name(name)
    if not 1 <= options.instances <= INT32_MAX:
        raise PfdeployError(f"--instances must be 1..{INT32_MAX} (Triton's count is an int32), got "
                            f"{options.instances}")
    if not 0 <= options.queue_delay_us <= UINT64_MAX:
        raise PfdeployError(f"--queue-delay-us must be 0..{UINT64_MAX} microseconds (a uint64 in Triton's "
                            f"schema), got {options.queue_delay_us}")
    if options.device not in DEVICES:
        raise PfdeployError(f"unknown device {options.device!r}; use one of {sorted(DEVICES)}")
    engine = spec.platform == TENSORRT_PLATFORM
    openvino = spec.platform == OPENVINO_BACKEND
    if engine and options.device == "cpu":
        raise PfdeployError(f"{spec.path}: a TensorRT engine runs on a GPU only; use --device gpu or auto")
    if openvino and options.device == "gpu":
        raise PfdeployError(f"{spec.path}: Triton's OpenVINO backend runs on the CPU here; use --device cpu or "
                            "auto, or --backend onnxruntime for a GPU")
    max_batch = resolve_max_batch(spec, options.max_batch)
    batched = max_batch > 0
    serving = ({"backend": OPENVINO_BACKEND, "default_model_filename": spec.filename} if openvino
               else {"platform": spec.platform})
    config: dict = {
        "name": name,
        **serving,
        "max_batch_size": max_batch,
        "input": [_tensor_entry(t, batched) for t in spec.inputs],
        "output": [_tensor_entry(t, batched) for t in spec.outputs],
    }
    if options.dynamic_batching:
        if not batched:
            raise PfdeployError(f"{spec.path}: dynamic batching needs a batch axis (max batch > 0)")
        config["dynamic_batching"] = {
            "preferred_batch_size": preferred_batch_sizes(spec, max_batch, options.preferred_batch),
            "max_queue_delay_microseconds": options.queue_delay_us,
        }
    auto_kind = "KIND_GPU" if engine else "KIND_CPU" if openvino else DEVICES["auto"]
    kind = auto_kind if options.device == "auto" else DEVICES[options.device]
    config["instance_group"] = [{"count": options.instances, "kind": Enum(kind)}]
    if openvino:
        config["parameters"] = openvino_parameters(options.instances)
    if engine and options.cuda_graphs:
        sizes = preferred_batch_sizes(spec, max_batch, options.preferred_batch) if batched else []
        cuda: dict = {"graphs": True}
        if sizes:
            cuda["graph_spec"] = [{"batch_size": b} for b in sizes]
        config["optimization"] = {"cuda": cuda}
    return config


_NAMED_ESCAPES = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord('"'): '\\"', ord("'"): "\\'",
                  ord("\\"): "\\\\"}


def escape_text(text: str, *, comment: bool = False) -> str:
    """`text` as printable ASCII the protobuf text format reads back unchanged inside "...": quotes and
    backslashes escaped, \\n \\r \\t named, every other byte outside printable ASCII (control characters,
    DEL, the UTF-8 bytes of non-ASCII text) as an octal escape. So no value can end its string or its
    `#` comment line, whatever it holds.

    A protobuf string must be UTF-8: text that is not (lone surrogates, as os.fsdecode gives for file
    names that are not UTF-8) is refused, except in a comment (`comment=True`), where its original bytes
    are shown escaped.
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        if comment:  # the file-name bytes os.fsdecode kept as surrogates; any other lone surrogate as \\udXXX
            try:
                data = text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                data = text.encode("utf-8", "backslashreplace")
            return _escaped(data)
        raise PfdeployError(f"{text!r} is not valid UTF-8 text, which a config.pbtxt string must be; rename "
                            "the tensor (or the field) to UTF-8 text") from None
    return _escaped(data)


def _escaped(data: bytes) -> str:
    return "".join(_NAMED_ESCAPES.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}") for b in data)


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Enum):
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
            raise ValueError(f"not a protobuf enum value: {value!r}")  # a bug: enum values are pfdeploy's own
        return str(value)
    if isinstance(value, str):
        return f'"{escape_text(value)}"'
    raise TypeError(f"config.pbtxt cannot hold {type(value).__name__} {value!r}")


def _render(obj: dict, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in obj.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", *_render(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += [f"{pad}{key} {{", *_render(item, indent + 1), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def pbtxt_from_config(config: dict, comments: tuple[str, ...] = ()) -> str:
    """Protobuf text format of a config dict, with optional leading `#` comment lines (escaped like
    strings, so a comment cannot end its line). The text is printable ASCII."""
    header = [f"# {escape_text(line, comment=True)}" for line in comments]
    return "\n".join([*header, *_render(config, 0)]) + "\n"
