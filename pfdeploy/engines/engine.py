"""`engine_from_onnx`: ONNX -> TensorRT plan + `<plan>.json` manifest (+ layer info, timing cache).

The steps are plain functions: `build_request` (validate inputs, derive the profile), `reusable_engine`
(same ONNX/options/GPU/TensorRT already built), `serialized_engine_from_onnx` (the TensorRT calls,
build.py) and `save_engine` (atomic writes, manifest last).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pfdeploy._io import sha256_bytes, write_bytes_atomic
from pfdeploy.engines.inspection import write_layer_info
from pfdeploy.engines.manifest import (
    build_manifest,
    io_from_onnx,
    manifest_path,
    reusable_manifest,
    reuse_key,
    write_manifest,
)
from pfdeploy.engines.options import BuildOptions
from pfdeploy.engines.profile import profile_shapes
from pfdeploy.errors import PfdeployError

if TYPE_CHECKING:
    from pfdeploy.engines.onnx_facts import OnnxFacts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    """The engine file, its manifest dict, and whether an existing engine was reused."""

    path: Path
    manifest: dict
    reused: bool

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.path)


@dataclass(frozen=True)
class BuildRequest:
    """A validated build: the ONNX facts, profile shapes, options and where the outputs go."""

    facts: OnnxFacts
    shapes: dict
    options: BuildOptions
    output: Path
    timing_cache: Path | None


def default_plan_path(onnx_path: str | os.PathLike) -> Path:
    """`r50.int8.onnx` -> `r50.int8.plan` beside it."""
    p = Path(onnx_path)
    return p.with_suffix(".plan") if p.suffix == ".onnx" else Path(f"{p}.plan")


def build_request(onnx_path, output=None, options: BuildOptions | None = None, *, batch=None,
                  timing_cache=None) -> BuildRequest:
    """Validate everything that can be checked without TensorRT (file, options, profile)."""
    from pfdeploy.engines.onnx_facts import onnx_facts  # reads the graph with onnx, imported on use

    options = options if options is not None else BuildOptions()
    facts = onnx_facts(onnx_path)
    shapes = profile_shapes(facts.inputs, batch)
    out = Path(output) if output is not None else default_plan_path(onnx_path)
    if out.resolve() == Path(onnx_path).resolve():
        raise PfdeployError(f"--output {out} would overwrite the ONNX file; choose a .plan path")
    if out.is_dir():
        raise PfdeployError(
            f"--output {out} is a directory; give the engine file path, e.g. {out}/model.plan"
        )
    return BuildRequest(facts, shapes, options, out, None if timing_cache is None else Path(timing_cache))


def request_key(request: BuildRequest, environment: dict) -> str:
    """Reuse key of this request on this machine."""
    return reuse_key(request.facts.sha256, request.shapes, request.options.to_dict(), environment)


def reusable_engine(request: BuildRequest, environment: dict) -> BuildResult | None:
    """The existing engine at request.output if it was built from the same ONNX, options, GPU and TensorRT."""
    manifest = reusable_manifest(request.output, request_key(request, environment))
    return None if manifest is None else BuildResult(request.output, manifest, True)


def read_timing_cache(path: Path | None) -> bytes | None:
    """Bytes of the timing cache file; b'' to start a new cache when the file does not exist yet.

    Anything there that is not a regular file (a FIFO would block the read, a device would be replaced by
    the cache written after the build), a file over MAX_TIMING_CACHE_BYTES, or one that cannot be read is
    one PfdeployError line. The bytes themselves are TensorRT's to judge (use_timing_cache)."""
    from pfdeploy.limits import MAX_TIMING_CACHE_BYTES, read_bytes_within

    if path is None:
        return None
    if path.is_dir():
        raise PfdeployError(f"--timing-cache {path} is a directory; give a file path, e.g. {path}/trt.cache")
    if not (path.exists() or path.is_symlink()):
        return b""
    return read_bytes_within(path, "--timing-cache", "give the path of a timing cache file (or a new one)",
                             MAX_TIMING_CACHE_BYTES)


def save_engine(request: BuildRequest, environment: dict, built, build_seconds: float) -> BuildResult:
    """Write plan, layer info and timing cache atomically, then the manifest last (it vouches for them).

    The timing cache file is rewritten only with a cache TensorRT accepted and updated
    (`built.timing_cache`); a file TensorRT rejected is kept as it was.
    """
    write_bytes_atomic(request.output, built.plan)
    layer_path = write_layer_info(request.output, built.layer_info) if built.layer_info is not None else None
    if request.timing_cache is not None and built.timing_cache:
        write_bytes_atomic(request.timing_cache, built.timing_cache)
    manifest = build_manifest(
        plan_path=request.output,
        plan_sha256=sha256_bytes(built.plan),
        plan_bytes=len(built.plan),
        facts=request.facts,
        shapes=request.shapes,
        options=request.options.to_dict(),
        environment=environment,
        build_seconds=build_seconds,
        key=request_key(request, environment),
        io=io_from_onnx(request.facts.path),
        layer_info=layer_path,
        timing_cache=request.timing_cache,
    )
    write_manifest(request.output, manifest)
    return BuildResult(request.output, manifest, False)


def engine_from_onnx(onnx_path, output=None, *, batch=None, timing_cache=None, force=False, progress=True,
                     **options) -> BuildResult:
    """Compile a strongly typed ONNX graph (FP32, FP16 casts or INT8 Q/DQ) into a TensorRT engine.

    batch: (min, opt, max) for a dynamic batch dimension; None means (1, 8, 32), or the fixed batch of a
    static-batch graph. timing_cache: file read before and written (atomically) after the build; a file
    TensorRT rejects is left as it was. force: rebuild even when an engine built from the same ONNX and
    options on this GPU and TensorRT exists, or when its manifest is unreadable or newer.
    options: the BuildOptions fields, as keywords: workspace_gib, opt_level (0-5), hardware_compat
    ("none", "ampere+", "same-cc"), version_compatible, inspect (save `<plan>.layers.json`), tf32.
    Raises MissingDependencyError (nothing written) without TensorRT or a GPU.
    """
    from pfdeploy.engines.build import serialized_engine_from_onnx
    from pfdeploy.engines.environment import current_environment
    from pfdeploy.engines.trt_check import require_trt_compatible

    request = build_request(onnx_path, output, BuildOptions.from_keywords(**options), batch=batch,
                            timing_cache=timing_cache)
    require_trt_compatible(request.facts.path)  # before TensorRT is imported: one line naming node and rule
    environment = current_environment()
    if not force:
        reused = reusable_engine(request, environment)
        if reused is not None:
            log.info(
                "reusing %s: built from the same ONNX with the same options on this GPU and TensorRT "
                "(--force rebuilds)",
                request.output,
            )
            return reused
    cache = read_timing_cache(request.timing_cache)
    log.info(
        "building %s engine for %s on %s (TensorRT %s)",
        request.facts.precision,
        request.output,
        environment["gpu_name"],
        environment["tensorrt_version"],
    )
    started = time.perf_counter()
    built = serialized_engine_from_onnx(request.facts.path, request.shapes, request.options, timing_cache=cache,
                                        progress=progress)
    return save_engine(request, environment, built, time.perf_counter() - started)
