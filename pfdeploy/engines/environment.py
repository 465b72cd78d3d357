"""Facts about this machine's TensorRT, CUDA and GPU. TensorRT and cuda-python are imported lazily here.

Raises MissingDependencyError (exit code 2, one line) when TensorRT, cuda-python or a GPU is missing.
"""

from __future__ import annotations

import logging

from pfdeploy.errors import MissingDependencyError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it with `pip install 'pfdeploy[tensorrt]'` (TensorRT 10 or 11 for CUDA 12 and cuda-python 12.x; "
    "`pfdeploy[tensorrt-cu13]` for CUDA 13) on a Linux or Windows machine with an NVIDIA GPU"
)


def require_tensorrt():
    """The `tensorrt` module, or MissingDependencyError naming the fix."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise MissingDependencyError(
            f"TensorRT {tensorrt.__version__} is too old: pfdeploy builds strongly typed engines "
            "with TensorRT 10+; " + INSTALL_HINT
        )
    return tensorrt


def format_cuda_version(value: int) -> str:
    """CUDA's integer version (1000*major + 10*minor, e.g. 12040) -> '12.4'."""
    value = int(value)
    return f"{value // 1000}.{(value % 1000) // 10}"


def _check(result, what: str):
    """cuda_call for the environment query: a failure means no usable GPU (MissingDependencyError)."""
    from pfdeploy.runtime.cuda_memory import cuda_call

    return cuda_call(result, what, fix="no usable CUDA GPU: check the NVIDIA driver and CUDA_VISIBLE_DEVICES",
                     error=MissingDependencyError)


def gpu_facts(device: int | None = None) -> dict:
    """GPU name, compute capability and CUDA versions via cuda-python (cudaGetDeviceProperties) of
    `device`, by default the thread's current device (where TensorRT builds and deserializes)."""
    from pfdeploy.runtime.cuda_memory import cudart as cuda_runtime

    cudart = cuda_runtime()
    count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if device is None:
        device = int(_check(cudart.cudaGetDevice(), "cudaGetDevice"))
    if count < 1 or device >= count:
        raise MissingDependencyError(
            f"no CUDA GPU {device} visible ({count} found); TensorRT engines need an NVIDIA GPU"
        )
    props = _check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = (
        props.name.decode(errors="replace").rstrip("\x00")
        if isinstance(props.name, bytes)
        else str(props.name)
    )
    return {
        "gpu_index": device,
        "gpu_name": name,
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda_runtime_version": format_cuda_version(
            _check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
        ),
        "cuda_driver_version": format_cuda_version(
            _check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")
        ),
    }


def current_environment(device: int | None = None) -> dict:
    """{tensorrt_version, cuda_runtime_version, cuda_driver_version, gpu_name, compute_capability, gpu_index}
    of `device`, by default the thread's current device: the one TensorRT builds on and loads engines on.

    Raises MissingDependencyError without TensorRT, cuda-python or a GPU.
    """
    trt = require_tensorrt()
    env = {"tensorrt_version": str(trt.__version__), **gpu_facts(device)}
    log.debug("environment: %s", env)
    return env
