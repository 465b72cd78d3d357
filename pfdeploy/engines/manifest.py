"""The `<plan>.json` manifest beside every engine: build it, write/read it atomically, decide reuse
and loadability. Pure: no TensorRT here; the environment is a plain dict from `current_environment()`.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from pfdeploy import __version__
from pfdeploy._io import sha256_bytes, sha256_file, write_json_atomic
from pfdeploy.errors import PfdeployError, shown
from pfdeploy.limits import is_int

FORMAT = "pfdeploy-engine-manifest"
MANIFEST_VERSION = 1
ENVIRONMENT_KEYS = (
    "tensorrt_version",
    "cuda_runtime_version",
    "cuda_driver_version",
    "gpu_name",
    "compute_capability",
)


def manifest_path(plan_path: str | os.PathLike) -> Path:
    """`model.plan` -> `model.plan.json` (the manifest sits beside the plan, never inside it)."""
    return Path(f"{os.fspath(plan_path)}.json")


def reuse_key(onnx_sha256: str, shapes: dict, options: dict, environment: dict) -> str:
    """Hash of everything that determines the engine: ONNX bytes, profile, build options, TensorRT, GPU."""
    ident = {
        "onnx_sha256": onnx_sha256,
        "profile": shapes,
        "options": options,
        "tensorrt_version": environment.get("tensorrt_version"),
        "gpu_name": environment.get("gpu_name"),
        "compute_capability": environment.get("compute_capability"),
    }
    return sha256_bytes(json.dumps(ident, sort_keys=True).encode())


def build_manifest(
    *,
    plan_path,
    plan_sha256: str,
    plan_bytes: int,
    facts,
    shapes: dict,
    options: dict,
    environment: dict,
    build_seconds: float,
    key: str,
    io: dict | None = None,
    layer_info=None,
    timing_cache=None,
    built_at: str | None = None,
) -> dict:
    """The manifest dict for one engine (see README, "Engine manifest").

    io: {"inputs": [...], "outputs": [...]}, each {"name", "dtype" (numpy name), "shape" (-1 dynamic)}:
    the engine's IO tensors (a strongly typed engine keeps its ONNX graph's), see `io_from_onnx`.
    """
    meta = dict(facts.metadata)
    first = next(iter(shapes.values()))
    return {
        "format": FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "plan": {"file": Path(plan_path).name, "sha256": plan_sha256, "bytes": plan_bytes},
        "onnx": {"file": Path(facts.path).name, "sha256": facts.sha256, "metadata": meta},
        "model": meta.get("pfdeploy.model"),
        "checkpoint_sha256": meta.get("pfdeploy.checkpoint_sha256"),
        "input_format": meta.get("pfdeploy.input_format"),
        "preprocess": json.loads(meta["pfdeploy.preprocess"]) if "pfdeploy.preprocess" in meta else None,
        "calibration": {k: v for k, v in meta.items() if k.startswith("pfdeploy.calibration")} or None,
        "precision": facts.precision,
        "precision_source": facts.precision_source,
        "strongly_typed": True,
        "profile": shapes,
        "io": io,
        "batch": {"min": first["min"][0], "opt": first["opt"][0], "max": first["max"][0]},
        "build": {**options, "timing_cache": None if timing_cache is None else str(timing_cache)},
        "environment": {k: environment.get(k) for k in ENVIRONMENT_KEYS},
        "pfdeploy_version": __version__,
        "built_at": built_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(float(build_seconds), 3),
        "reuse_key": key,
        "layer_info": None if layer_info is None else Path(layer_info).name,
    }


def write_manifest(plan_path: str | os.PathLike, manifest: dict) -> Path:
    """Write `<plan>.json` atomically; returns its path."""
    return write_json_atomic(manifest_path(plan_path), manifest)


def read_manifest(plan_path: str | os.PathLike) -> dict:
    """Read and check the manifest beside `plan_path` (PfdeployError if missing, unreadable, not a
    manifest, written by a newer pfdeploy, or holding a value of the wrong type or range: see
    `manifest_problem`). A FIFO is refused before it is opened; deep or huge JSON like other bad JSON."""
    from pfdeploy.limits import read_json_file

    path = manifest_path(plan_path)
    if not path.exists():
        raise PfdeployError(f"no manifest {path} beside the engine; rebuild it with `pfdeploy build-engine`")
    data = read_json_file(path, "engine manifest", "rebuild the engine with `pfdeploy build-engine --force`")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PfdeployError(f"{path} is not a pfdeploy engine manifest; rebuild the engine with --force")
    version = data.get("manifest_version", 0)
    if not is_int(version) or version > MANIFEST_VERSION:
        raise PfdeployError(
            f"{path} was written by a newer pfdeploy (manifest v{str(version)[:20]}, this pfdeploy reads "
            f"v{MANIFEST_VERSION}); upgrade pfdeploy, or rebuild over it with --force"
        )
    problem = manifest_problem(data)
    if problem:
        raise PfdeployError(f"{path} is not a valid engine manifest: {problem}; rebuild the engine with "
                            "`pfdeploy build-engine --force`")
    return data



def _dims_problem(field: str, dims, low: int) -> str | None:
    if not isinstance(dims, list) or not all(is_int(d) and (d >= low or d == -1 and low < 1) for d in dims):
        kind = "positive integers" if low >= 1 else "positive integers or -1 (dynamic)"
        return f"{field} must be a list of {kind}, got {shown(dims)}"
    return None


def _tensors_problem(field: str, tensors) -> str | None:
    if not isinstance(tensors, list):
        return f"{field} must be a list of tensors, got {shown(tensors)}"
    for index, tensor in enumerate(tensors):
        where = f"{field}[{index}]"
        if not isinstance(tensor, dict):
            return f"{where} must be an object with name, dtype and shape, got {shown(tensor)}"
        if not isinstance(tensor.get("name"), str) or not tensor["name"]:
            return f"{where}.name must be a non-empty string, got {shown(tensor.get('name'))}"
        if not isinstance(tensor.get("dtype"), str):
            return f"{where}.dtype must be a string, got {shown(tensor.get('dtype'))}"
        problem = _dims_problem(f"{where}.shape", tensor.get("shape"), 0)
        if problem:
            return problem
    return None


def _strings_problem(field: str, value, optional: tuple[str, ...] = ()) -> str | None:
    if not isinstance(value, dict):
        return f"{field} must be an object, got {shown(value)}"
    for key in optional:
        if value.get(key) is not None and not isinstance(value[key], str):
            return f"{field}.{key} must be a string, got {shown(value[key])}"
    return None


def manifest_problem(data: dict) -> str | None:
    """What is wrong with the values of a parsed manifest (None if nothing): each field the runtime, Triton
    and reuse read has its type and range checked (a batch of 1 <= min <= opt <= max <= MAX_BATCH, shapes
    of integers, metadata of strings, a plain layer-info file name), so a hand-edited manifest is one line."""
    from pfdeploy.choices import INPUT_FORMATS
    from pfdeploy.limits import MAX_BATCH

    plan = data.get("plan")
    problem = _strings_problem("plan", plan, ("file", "sha256"))
    if problem:
        return problem
    if plan.get("bytes") is not None and (not is_int(plan["bytes"]) or plan["bytes"] < 0):
        return f"plan.bytes must be a non-negative integer, got {shown(plan['bytes'])}"
    onnx = data.get("onnx") or {}
    problem = _strings_problem("onnx", onnx, ("file", "sha256"))
    if problem:
        return problem
    meta = onnx.get("metadata") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return f"onnx.metadata must be an object of strings, got {shown(meta)}"
    batch = data.get("batch")
    if not isinstance(batch, dict) or not all(is_int(batch.get(k)) for k in ("min", "opt", "max")) or not \
            1 <= batch["min"] <= batch["opt"] <= batch["max"] <= MAX_BATCH:
        return (f"batch must be {{min, opt, max}} integers with 1 <= min <= opt <= max <= {MAX_BATCH}, got "
                f"{shown(batch)}")
    profile = data.get("profile")
    if not isinstance(profile, dict) or not profile:
        return f"profile must be an object of input shapes, got {shown(profile)}"
    for name, shapes in profile.items():
        if not isinstance(shapes, dict):
            return f"profile[{name[:40]!r}] must be an object with min, opt and max shapes, got {shown(shapes)}"
        for key in ("min", "opt", "max"):
            problem = _dims_problem(f"profile[{name[:40]!r}].{key}", shapes.get(key), 1)
            if problem:
                return problem
        if not len(shapes["min"]) == len(shapes["opt"]) == len(shapes["max"]) == 4:
            return f"profile[{name[:40]!r}] min, opt and max must be image shapes of rank 4 (NCHW or NHWC)"
    io = data.get("io")
    if io is not None:
        if not isinstance(io, dict):
            return f"io must be an object with inputs and outputs, got {shown(io)}"
        for key in ("inputs", "outputs"):
            problem = _tensors_problem(f"io.{key}", io.get(key, []))
            if problem:
                return problem
    if data.get("input_format") is not None and data["input_format"] not in INPUT_FORMATS:
        return f"input_format must be one of {', '.join(INPUT_FORMATS)}, got {shown(data['input_format'])}"
    for key in ("model", "precision", "reuse_key", "checkpoint_sha256", "layer_info"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"{key} must be a string, got {shown(data[key])}"
    if data.get("layer_info") is not None and Path(data["layer_info"]).name != data["layer_info"]:
        return f"layer_info must be a file name beside the plan, got {shown(data['layer_info'])}"
    for key in ("environment", "build"):
        section = data.get(key) or {}
        if not isinstance(section, dict) or not all(v is None or isinstance(v, (str, int, float)) for v in
                                                    section.values()):
            return f"{key} must be an object of plain values, got {shown(section)}"
    return None


def plan_matches(plan_path: str | os.PathLike, manifest: dict) -> bool:
    """True when the plan's bytes are the ones the manifest vouches for (its recorded sha256)."""
    recorded = (manifest.get("plan") or {}).get("sha256")
    return bool(recorded) and recorded == sha256_file(plan_path)


def check_plan_matches(plan_path: str | os.PathLike, manifest: dict) -> None:
    """Refuse (one line) a plan that is not the one its manifest describes: replaced or truncated."""
    if not plan_matches(plan_path, manifest):
        raise PfdeployError(
            f"{plan_path} does not match its manifest (sha256 differs); the plan was replaced or truncated: "
            "rebuild it with `pfdeploy build-engine --force`"
        )


def reusable_manifest(plan_path: str | os.PathLike, key: str) -> dict | None:
    """The existing manifest if the plan beside it was built from the same inputs and is intact, else None.

    A manifest that cannot be read, or was written by a newer pfdeploy, is not silently rebuilt over:
    read_manifest's error (naming --force, which skips this check) propagates.
    """
    plan_path = Path(plan_path)
    if not plan_path.is_file() or not manifest_path(plan_path).is_file():
        return None
    manifest = read_manifest(plan_path)
    if manifest.get("reuse_key") != key:
        return None
    if not plan_matches(plan_path, manifest):
        return None  # plan replaced or truncated since the manifest was written
    layer_info = manifest.get("layer_info")
    if layer_info and not (plan_path.parent / layer_info).is_file():
        return None
    return manifest


def io_from_onnx(path: str | os.PathLike) -> dict:
    """{"inputs": [...], "outputs": [...]} of an ONNX graph: name, NumPy dtype name, shape (-1 when not fixed)."""
    from pfdeploy._onnxfile import load_onnx
    from pfdeploy._onnxgraph import graph_inputs, graph_outputs

    model = load_onnx(path, external_data=False)

    def entries(tensors) -> list[dict]:
        return [{"name": t.name, "dtype": t.dtype, "shape": [d if isinstance(d, int) and d > 0 else -1 for d in t.dims]}
                for t in tensors]

    return {"inputs": entries(graph_inputs(model)), "outputs": entries(graph_outputs(model))}


def _version_tuple(text) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(text or "")))


def _cc_tuple(text) -> tuple[int, int]:
    parts = _version_tuple(text)
    if len(parts) < 2:
        raise ValueError(text)
    return parts[0], parts[1]


#: Major versions across which TensorRT promises that a version-compatible plan loads on the newer runtime
#: (built -> runtime). TensorRT 10.x "Version Compatibility": "engines built with TensorRT 8 work with
#: TensorRT 9 and TensorRT 10 runtimes"; TensorRT 11 Support Matrix, "Engine Portability": "TensorRT 10
#: version-compatible engines can run with a TensorRT 11 runtime, and TensorRT 8 version-compatible engines
#: can run with a TensorRT 10 runtime. No other combination across major versions is supported." (9 -> 10 is
#: promised by neither text, so it is not allowed.)
VERSION_COMPATIBLE_MAJORS = frozenset({(8, 9), (8, 10), (10, 11)})
#: Version compatibility exists from TensorRT 8.6 on, for the plan's builder and the runtime alike.
FIRST_VERSION_COMPATIBLE = (8, 6)


def version_compatible_problem(built: tuple[int, ...], here: tuple[int, ...]) -> str | None:
    """Why a version-compatible plan built by TensorRT `built` is outside TensorRT's promise on the newer
    runtime `here` (version tuples), or None when it is within it."""
    if built[:2] < FIRST_VERSION_COMPATIBLE or here[:2] < FIRST_VERSION_COMPATIBLE:
        return "TensorRT has version compatibility from 8.6 on only"
    if built[0] != here[0] and (built[0], here[0]) not in VERSION_COMPATIBLE_MAJORS:
        allowed = ", ".join(f"{a} -> {b}" for a, b in sorted(VERSION_COMPATIBLE_MAJORS))
        return (f"TensorRT promises newer runtimes of the same major version, and across majors only {allowed}; "
                f"{built[0]} -> {here[0]} is not among them")
    return None


def check_loadable(manifest: dict, environment: dict) -> tuple[bool, str]:
    """Can this engine be deserialized here? (ok, reason): the reason names the mismatch and the fix.

    Rules (TensorRT "Engine Compatibility" docs): without version compatibility the TensorRT version must
    match exactly; with it (see `version_compatible_problem`), the runtime may be the same or newer within the
    promise TensorRT makes (same major; across majors only VERSION_COMPATIBLE_MAJORS). Without hardware
    compatibility the compute capability must match; `same-cc` needs the same compute capability (any
    GPU model); `ampere+` needs compute capability 8.0 or newer.
    """
    built = manifest.get("environment") or {}
    flags = manifest.get("build") or {}
    try:
        built_cc, here_cc = (
            _cc_tuple(built.get("compute_capability")),
            _cc_tuple(environment.get("compute_capability")),
        )
    except ValueError:
        return False, "the manifest or this machine lacks a GPU compute capability; rebuild the engine here"
    built_trt, here_trt = built.get("tensorrt_version"), environment.get("tensorrt_version")
    if not built_trt or not here_trt:
        return False, "the manifest or this machine lacks a TensorRT version; rebuild the engine here"

    rebuild = "rebuild it here with `pfdeploy build-engine --force`"
    if _version_tuple(built_trt) != _version_tuple(here_trt):
        if not flags.get("version_compatible"):
            return False, (
                f"engine built with TensorRT {built_trt}, this machine has {here_trt}, and it was not "
                f"built --version-compatible; {rebuild}"
            )
        if _version_tuple(here_trt) < _version_tuple(built_trt):
            return False, (
                f"engine built with TensorRT {built_trt} cannot run on the older TensorRT {here_trt} "
                f"(version compatibility is forward only); {rebuild}"
            )
        problem = version_compatible_problem(_version_tuple(built_trt), _version_tuple(here_trt))
        if problem:
            return False, f"version-compatible engine from TensorRT {built_trt} on {here_trt}: {problem}; {rebuild}"

    compat = flags.get("hardware_compat", "none")
    cc_text = f"{here_cc[0]}.{here_cc[1]}"
    built_text = f"{built_cc[0]}.{built_cc[1]}"
    if compat == "ampere+":
        if here_cc < (8, 0):
            return (
                False,
                f"engine built --hardware-compat ampere+ needs compute capability >= 8.0, "
                f"this GPU has {cc_text}",
            )
    elif here_cc != built_cc:
        hint = "" if compat == "same-cc" else " and without hardware compatibility"
        return False, (
            f"engine built for compute capability {built_text}{hint}, this GPU "
            f"({environment.get('gpu_name')}) has {cc_text}; {rebuild} "
            "or build with --hardware-compat ampere+"
        )

    notes = []
    if _version_tuple(built_trt) != _version_tuple(here_trt):
        notes.append(f"version-compatible engine from TensorRT {built_trt} on {here_trt}")
    if built.get("gpu_name") != environment.get("gpu_name"):
        notes.append(f"built on {built.get('gpu_name')}, running on {environment.get('gpu_name')}")
    return True, "loadable" + (f" ({'; '.join(notes)})" if notes else "")
