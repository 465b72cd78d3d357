"""ONNX Runtime sessions with throughput-tuned options.

What matters on CPU (measured in docs/benchmarks.md): full graph optimization (ORT fuses the
erf-GELU, LayerNorm, MatMul+Add and Conv+activation patterns at load time), one intra-op thread
per physical core, sequential execution (these graphs are chains), and memory-pattern planning
for fixed shapes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pfdeploy.errors import MissingDependencyError, PfdeployError

log = logging.getLogger(__name__)

DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def physical_cores() -> int:
    """Cores available to this process (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def session_options(intra_op_threads: int | None = None, optimized_model_path: str | None = None,
                    profile_prefix: str | None = None):
    """The SessionOptions pfdeploy uses: ORT_ENABLE_ALL, sequential, threads = cores, no spinning wait."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = True
    opts.log_severity_level = 3
    if optimized_model_path:
        opts.optimized_model_filepath = optimized_model_path
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def ort_session_from_onnx(path: str | Path, *, device: str = "cpu", intra_op_threads: int | None = None,
                          providers: list | None = None, **option_kwargs):
    """An onnxruntime.InferenceSession for `path` on `device` ('cpu', 'cuda', 'tensorrt').

    Refuses (MissingDependencyError) a device whose execution provider this onnxruntime lacks
    rather than silently running on the CPU.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - runtime dependency
        raise MissingDependencyError("onnxruntime is not installed; pip install onnxruntime") from exc
    path = Path(path)
    if not path.is_file():
        raise PfdeployError(f"ONNX file {path} not found")
    if providers is None:
        if device not in DEVICE_PROVIDERS:
            raise PfdeployError(f"unknown device {device!r}; use one of {', '.join(DEVICE_PROVIDERS)}")
        providers = DEVICE_PROVIDERS[device]
        available = ort.get_available_providers()
        if providers[0] not in available:
            raise MissingDependencyError(
                f"onnxruntime has no {providers[0]} (available: {', '.join(available)}); "
                "install onnxruntime-gpu on a GPU machine or use device='cpu'"
            )
    opts = session_options(intra_op_threads, **option_kwargs)
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
