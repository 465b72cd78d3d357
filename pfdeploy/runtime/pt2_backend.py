"""The `pt2` backend: AOTInductor packages written by `pfdeploy export NAME --format pt2`.

    with load("r50_max.fp16.pt2", device="cuda", cuda_graph=True) as session:
        logits = session(batch)

Before anything is loaded, the package's metadata (read from the archive) is checked against this
machine (`package_problem`, a pure function): the device kind it was compiled for, on CUDA the GPU's
compute capability (its kernels are compiled for one architecture), on the CPU the instruction set
(a package built for AVX-512 would crash an AVX2-only CPU); a package from another torch version
loads with a warning (AOTInductor's ABI is meant to be stable, it is not promised). The package
takes what the matching ONNX artifact takes (float32 NCHW or uint8 NHWC, FP32 IO also for FP16
packages) and returns float32 logits; a fixed-batch package refuses other batches in one line.
Staging, CUDA graphs (`cuda_graph=True`: one per input shape, the package loaded single-threaded
as AOTInductor asks for capture) and device-only timing are the torch backend's (TorchRunner).
Calls serialize with the session's lock on every device (one compiled model instance; on the CPU its
kernels use every core for one call anyway): open one session per thread for concurrent inference.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.export.metadata import PREFIX, require_pfdeploy_metadata
from pfdeploy.export.pt2 import AOTI_CC, AOTI_CPU_ISA, AOTI_DEVICE_KEY, read_pt2_metadata
from pfdeploy.runtime.session import spec_for_format
from pfdeploy.runtime.torch_backend import TorchRunner, _torch_device

log = logging.getLogger(__name__)

#: /proc/cpuinfo flags a CPU needs for the instruction set AOTInductor built a CPU package for.
ISA_FLAGS = {"avx2": ("avx2", "fma"), "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
             "amx": ("avx512f", "amx_tile", "amx_bf16")}


def package_device(meta: dict[str, str]) -> str:
    """'cpu' or 'cuda': the device kind a package was compiled for."""
    return meta.get(PREFIX + "device") or meta.get(AOTI_DEVICE_KEY) or "cpu"


def package_problem(meta: dict[str, str], device_type: str, *, cpu_flags: frozenset[str] = frozenset(),
                    compute_capability: str | None = None) -> str | None:
    """Why a package with metadata `meta` cannot run on `device_type` here (None when it can).

    cpu_flags: this CPU's /proc/cpuinfo flags (empty: unknown, not checked); compute_capability: this
    GPU's "major.minor" (None: not checked).
    """
    built_for = package_device(meta)
    fix = f"export one here with `pfdeploy export {meta.get(PREFIX + 'model', 'NAME')} --format pt2 --device " \
          f"{device_type}`"
    if built_for != device_type:
        return f"it was compiled for {built_for}, not {device_type}; open it with device='{built_for}', or {fix}"
    if device_type == "cuda":
        wanted = meta.get(PREFIX + "compute_capability") or meta.get(AOTI_CC) or None
        if wanted and compute_capability and wanted.replace(".", "") != compute_capability.replace(".", ""):
            gpu = meta.get(PREFIX + "gpu", "another GPU")
            return (f"it was compiled for compute capability {wanted} ({gpu}); this GPU has {compute_capability}: "
                    f"{fix} on this GPU")
        return None
    isa = (meta.get(AOTI_CPU_ISA) or "").lower()
    needed = next((flags for name, flags in ISA_FLAGS.items() if isa.startswith(name)), ())
    missing = [flag for flag in needed if cpu_flags and flag not in cpu_flags]
    if missing:
        return (f"it was compiled for {meta[AOTI_CPU_ISA]} CPUs and this CPU lacks {', '.join(missing)}; "
                f"{fix} on this machine")
    return None


def _machine_facts(device: torch.device) -> dict[str, Any]:
    from pfdeploy._cpu import cpu_flags

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"compute_capability": f"{props.major}.{props.minor}"}
    return {"cpu_flags": cpu_flags()}


def _size_of(meta: dict[str, str], path: Path) -> int:
    from pfdeploy.calibration.preprocess import preprocess_from_metadata

    return int(preprocess_from_metadata(meta, str(path)).size)


def _batch_of(meta: dict[str, str], path: Path) -> int | None:
    batch = meta.get(PREFIX + "batch", "dynamic")
    if batch == "dynamic":
        return None
    if not batch.isdigit() or int(batch) < 1:
        raise PfdeployError(f"{path}: metadata {PREFIX}batch is {batch!r}; re-export it with "
                            "`pfdeploy export NAME --format pt2`")
    return int(batch)


class Pt2Session(TorchRunner):
    """Runs an AOTInductor .pt2 package (see the module docstring)."""

    backend = "pt2"

    def __init__(self, path: str | Path, *, device: str | None = None, cuda_graph: bool = False):
        self.path = Path(path)
        meta = read_pt2_metadata(self.path)
        require_pfdeploy_metadata(meta, str(self.path))
        self._device = _torch_device(device or package_device(meta))
        problem = package_problem(meta, self._device.type, **_machine_facts(self._device))
        if problem:
            raise PfdeployError(f"{self.path}: {problem}")
        if cuda_graph and self._device.type != "cuda":
            raise PfdeployError("cuda_graph=True needs device='cuda'")
        built_with = meta.get(PREFIX + "torch")
        if built_with and built_with.split(".")[:2] != torch.__version__.split(".")[:2]:
            log.warning("%s was compiled with torch %s; this is torch %s (re-export it if it fails to load)",
                        self.path, built_with, torch.__version__)
        batch = _batch_of(meta, self.path)
        spec = spec_for_format(meta[PREFIX + "input_format"], _size_of(meta, self.path),
                               min_batch=batch or 1, max_batch=batch)
        super().__init__(spec, meta, str(self._device))
        index = self._device.index if self._device.type == "cuda" else -1
        try:
            self._runner = torch._inductor.aoti_load_package(str(self.path), run_single_threaded=cuda_graph,
                                                              device_index=-1 if index is None else index)
        except RuntimeError as exc:
            raise PfdeployError(f"{self.path} could not be loaded by AOTInductor ({str(exc).splitlines()[0][:200]}); "
                                "re-export it with this torch on this machine") from None
        self._cuda_graph = bool(cuda_graph)
        self._tf32 = False  # FP32 packages are compiled with TF32 off; keep cuDNN's extern convolutions FP32 too
        self._init_runner()
        self.thread_safe = False  # one AOTInductor model instance (num_runners=1): calls take the lock

    def describe(self) -> dict[str, Any]:
        """Session.describe plus what the package was compiled with."""
        keys = ("format", "device", "batch", "folded_bn", "fused_layers", "channels_last", "max_autotune", "torch")
        return {**super().describe(), "package": {k: self.metadata.get(PREFIX + k) for k in keys},
                "cuda_graph": self._cuda_graph}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._math_mode():
            return self._runner(x)

    def _release(self) -> None:
        super()._release()
        self._runner = None


def pt2_session(path: str | Path, *, device: str | None = None, **options: Any) -> Pt2Session:
    """A Pt2Session on `path` (`load`'s entry point for backend "pt2")."""
    if not str(path).lower().endswith(".pt2"):
        raise PfdeployError(f"the pt2 backend runs .pt2 packages, not {path}")
    if device == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("device='cuda' needs a CUDA GPU and a CUDA build of PyTorch; none found")
    return Pt2Session(path, device=device, **options)
