"""The TensorRT calls: ONNX -> strongly typed network -> serialized plan. One code path, TensorRT 10 and 11.

Everything around these calls (profiles, options, manifest, reuse, writing) is pure and lives in the
sibling modules; `serialized_engine_from_onnx` is the only function here that needs a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pfdeploy.engines.environment import require_tensorrt
from pfdeploy.engines.options import BuildOptions
from pfdeploy.engines.progress import PhaseBars, progress_monitor
from pfdeploy.errors import PfdeployError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParserIssue:
    """One ONNX-parser error, copied out of trt.ParserError."""

    node_index: int
    node_name: str
    node_operator: str
    code: str
    desc: str


@dataclass(frozen=True)
class BuiltPlan:
    """What a TensorRT build returns: plan bytes, the updated timing cache to write back (None: leave
    the cache file as it is), inspector JSON (or None)."""

    plan: bytes
    timing_cache: bytes | None = None
    layer_info: str | None = None


def _call(obj, name, default=""):
    fn = getattr(obj, name, None)  # node_name/node_operator exist in TensorRT 10+, not in older bindings
    try:
        return fn() if callable(fn) else default
    except Exception:  # noqa: BLE001 - an accessor failing must not hide the parse error itself
        return default


def parser_issue(error) -> ParserIssue:
    """Copy a trt.ParserError (code, desc, node, node_name, node_operator) into a ParserIssue."""
    return ParserIssue(
        node_index=int(_call(error, "node", -1)),
        node_name=str(_call(error, "node_name")),
        node_operator=str(_call(error, "node_operator")),
        code=str(_call(error, "code")),
        desc=str(_call(error, "desc")),
    )


def format_parser_errors(path, issues) -> str:
    """One line naming the failing node(s), their operator and TensorRT's reason."""
    if not issues:
        return f"TensorRT could not parse {path} (no parser error was reported); run `pfdeploy verify` on it"
    parts = []
    for issue in issues:
        where = f"node {issue.node_name or '#' + str(issue.node_index)}"
        if issue.node_operator:
            where += f" ({issue.node_operator})"
        parts.append(f"{where}: {issue.desc or issue.code}")
    more = f" (+{len(issues) - 3} more)" if len(issues) > 3 else ""
    return (
        f"TensorRT could not parse {Path(path).name}: "
        + "; ".join(parts[:3])
        + more
        + "; re-export with `--opset 18` (writes GELU without the Gelu op) or keep that operator out of the graph"
    )


def network_flags(trt) -> int:
    """Creation flags for a strongly typed network: STRONGLY_TYPED where the enum has it (10.x, and 11.x if
    still present); 0 otherwise, since TensorRT 11 networks are strongly typed by default.
    EXPLICIT_BATCH is deprecated and ignored since 10.0, so it is never set."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _configure(trt, builder, config, options: BuildOptions, shapes: dict) -> None:
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.opt_level
    if options.hardware_compat != "none":
        level = getattr(trt.HardwareCompatibilityLevel, options.hardware_compat_level, None)
        if level is None:
            raise PfdeployError(
                f"this TensorRT ({trt.__version__}) has no hardware compatibility level "
                f"{options.hardware_compat_level}; upgrade TensorRT or drop --hardware-compat"
            )
        config.hardware_compatibility_level = level
    if options.version_compatible:
        # The plan embeds the lean runtime (EXCLUDE_LEAN_RUNTIME is not set), so it loads on newer
        # TensorRT without shipping a separate lean runtime; loading needs engine_host_code_allowed.
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    # TensorRT lets FP32 layers use TF32 unless told otherwise; FP32 must mean FP32 (--tf32 opts in).
    if options.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.inspect:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for name, s in shapes.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    if config.add_optimization_profile(profile) < 0:  # TensorRT: -1 when the profile is invalid
        described = "; ".join(f"{name} {s['min']}..{s['max']} (opt {s['opt']})" for name, s in shapes.items())
        raise PfdeployError(f"TensorRT rejected the optimization profile {described} (see its message above; "
                            "rerun with -v); check --batch MIN,OPT,MAX against the ONNX graph's inputs")


REJECTED_CACHE = (
    "TensorRT rejected the timing cache file (made by another TensorRT or GPU, or damaged); "
    "it is left unchanged and not updated by this build"
)


def _timing_cache_from(config, data: bytes):
    """config.create_timing_cache(data), or None when TensorRT rejects the bytes by returning None or by
    raising (it may raise on a damaged file; Polygraphy treats that as no cache too)."""
    try:
        return config.create_timing_cache(data)
    except Exception as exc:  # noqa: BLE001 - TensorRT's exception types are not documented
        log.debug("create_timing_cache raised %s: %s", type(exc).__name__, exc)
        return None


def use_timing_cache(config, data: bytes | None) -> tuple[object | None, bool]:
    """Give the build a timing cache made from `data` (b"" starts a new one; None: no cache).

    Returns (the cache TensorRT uses or None, whether to write it back to the file afterwards). A file
    TensorRT rejects (create_timing_cache returns None, or set_timing_cache returns False) is never
    overwritten: the build gets a fresh cache that is not saved, and a warning says so. An exception
    from create_timing_cache counts as a rejection.
    """
    if data is None:
        return None, False
    cache = _timing_cache_from(config, data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache, True
    if not data:
        log.warning("TensorRT could not create a timing cache; building without one (nothing is saved)")
        return None, False
    log.warning(REJECTED_CACHE)
    fresh = _timing_cache_from(config, b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        log.warning("TensorRT could not create a fresh timing cache either; building without one")
        return None, False
    return fresh, False


def _layer_info(trt, logger, plan: bytes, version_compatible: bool) -> str:
    runtime = trt.Runtime(logger)
    if version_compatible:
        runtime.engine_host_code_allowed = True  # a version-compatible plan carries the lean runtime
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise PfdeployError("TensorRT could not deserialize the engine it just built; rerun with -v")
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def serialized_engine_from_onnx(
    onnx_path,
    shapes: dict,
    options: BuildOptions,
    *,
    timing_cache: bytes | None = None,
    progress: bool = True,
) -> BuiltPlan:
    """Parse `onnx_path` into a strongly typed network and build a serialized engine with one profile.

    timing_cache: bytes of the cache file (b"" for a new one; None: no cache); the returned
    BuiltPlan.timing_cache is the updated cache to save, or None when the file must stay as it was.
    """
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.VERBOSE if log.isEnabledFor(logging.DEBUG) else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        issues = [parser_issue(parser.get_error(i)) for i in range(parser.num_errors)]
        raise PfdeployError(format_parser_errors(onnx_path, issues))

    config = builder.create_builder_config()
    _configure(trt, builder, config, options, shapes)
    _, save_cache = use_timing_cache(config, timing_cache)
    bars = PhaseBars(enabled=progress)
    monitor = progress_monitor(trt, bars)  # referenced until the build returns
    config.progress_monitor = monitor
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        bars.close()
    if bars.cancelled:
        raise KeyboardInterrupt
    if plan is None:
        raise PfdeployError(
            "TensorRT could not build the engine (see its messages above; rerun with -v); "
            "try a larger --workspace or a smaller --batch maximum"
        )
    plan_bytes = bytes(plan)
    cache_bytes = bytes(config.get_timing_cache().serialize()) if save_cache else None  # updated by the build
    info = _layer_info(trt, logger, plan_bytes, options.version_compatible) if options.inspect else None
    return BuiltPlan(plan_bytes, cache_bytes, info)
