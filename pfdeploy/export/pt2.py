"""PyTorch model -> ahead-of-time compiled `.pt2` package (torch.export + AOTInductor).

`pt2_from_model` prepares the model as the torch backend runs it for speed (BatchNorm folded;
channels-last for the CNNs on CUDA; optionally the PF layers fused into pfdeploy's Triton kernel),
wraps it so that it takes exactly what the matching ONNX graph takes (float32 NCHW, or uint8 NHWC
normalized inside) and returns float32 logits (an FP16 package computes in FP16 inside, its IO stays
FP32), exports it with `torch.export.export` (a fixed batch, or a dynamic one declared 1..MAX_BATCH
with `torch.export.Dim`) and compiles it with `torch._inductor.aoti_compile_and_package` for the CPU
(C++ kernels, built by the machine's compiler) or a CUDA GPU (Triton kernels, max-autotune by
default). The package carries the same `pfdeploy.*` metadata as the ONNX artifacts plus the format,
device, torch version and (CUDA) the GPU it was compiled for, in AOTInductor's own metadata, which
`read_pt2_metadata` reads from the archive without loading the compiled code. It is compiled in a
scratch folder and moved into place atomically.

A package runs only where it was compiled for: the same device kind, the same GPU compute capability,
a CPU with the instruction set it was built for, and (AOTInductor's ABI) a matching torch.
`pfdeploy.runtime.load("m.pt2")` checks these before loading it (pfdeploy.runtime.pt2_backend).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pfdeploy._io import atomic_path, check_output_file, refuse_overwrite, sha256_file, temporary_dir
from pfdeploy.choices import EXPORT_PRECISIONS, INPUT_FORMATS
from pfdeploy.errors import MissingDependencyError, PfdeployError
from pfdeploy.export.metadata import PREFIX, RANDOM, metadata_for
from pfdeploy.limits import MAX_BATCH, MAX_METADATA_BYTES, is_int

log = logging.getLogger(__name__)

FORMAT = "pt2"
PT2_DEVICES = ("cpu", "cuda")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
#: AOTInductor's own metadata entries of a package (beside the `pfdeploy.*` ones).
AOTI_DEVICE_KEY, AOTI_CPU_ISA, AOTI_CC = "AOTI_DEVICE_KEY", "AOTI_CPU_ISA", "AOTI_COMPUTE_CAPABILITY"
METADATA_ENTRY = re.compile(r"^[^/]+/data/aotinductor/[^/]+/[^/]+\.wrapper_metadata\.json$")


class InferenceModule(nn.Module):
    """What a package computes: input in the artifact's format -> the prepared model -> float32 logits.

    float-nchw: float32 NCHW, cast to the compute dtype (and to channels-last for CNNs on CUDA);
    uint8-nhwc: raw pixels normalized as the `uint8-nhwc` ONNX graph does (export.preprocess).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool):
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype).contiguous(memory_format=self.memory_format)
        return self.model(x).float()


def _check_args(output: Path, batch: str | int, precision: str, input_format: str, device: str, fused: bool) -> None:
    if output.suffix != ".pt2":
        raise PfdeployError(f"a .pt2 package's file name must end in .pt2 (AOTInductor requires it); got {output}")
    if precision not in EXPORT_PRECISIONS:
        raise PfdeployError(f"precision {precision!r} is not exported to .pt2; use fp32 or fp16")
    if input_format not in INPUT_FORMATS:
        raise PfdeployError(f"unknown input format {input_format!r}; use one of {', '.join(INPUT_FORMATS)}")
    if batch != "dynamic" and not (is_int(batch) and 1 <= batch <= MAX_BATCH):
        raise PfdeployError(f"batch must be 'dynamic' or an integer 1..{MAX_BATCH}, got {batch!r}")
    if device not in PT2_DEVICES:
        raise PfdeployError(f"a .pt2 package is compiled for {' or '.join(PT2_DEVICES)}, not {device!r}")
    if device == "cpu" and precision == "fp16":
        raise PfdeployError("fp16 .pt2 packages are compiled for CUDA (PyTorch's CPU FP16 kernels are slower than "
                            "FP32); pass --device cuda on a GPU machine, or export fp32 for the CPU")
    if device == "cpu" and fused:
        raise PfdeployError("--fused compiles pfdeploy's Triton kernel into the package, for CUDA only; pass "
                            "--device cuda, or drop --fused for the CPU")
    if device == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("--device cuda needs a CUDA GPU and a CUDA build of PyTorch; none found here "
                                     "(export for the CPU with --device cpu)")
    if fused:
        from pfdeploy.kernels import triton_problem

        problem = triton_problem()
        if problem:
            raise MissingDependencyError(f"--fused: {problem}")
    problem = pt2_toolchain_problem(device)
    if problem:
        raise MissingDependencyError(problem)


def pt2_toolchain_problem(device: str, *, cuda_home: str | None | bool = False,
                          cxx: str | None | bool = False) -> str | None:
    """Why AOTInductor cannot build a `device` package on this machine (one line), or None.

    Every package is C++ built by the machine's compiler (the wrapper, and on the CPU the kernels): torch's
    own choice (torch._inductor.cpp_builder, $CXX) or c++/g++/clang++ on PATH. A CUDA package also links
    against the CUDA toolkit (torch.utils.cpp_extension.CUDA_HOME: $CUDA_HOME, or nvcc on PATH); without
    it Inductor fails only late, with `OSError: CUDA_HOME environment variable is not set`.
    cuda_home, cxx: given for tests (None: absent); False: look them up here.
    """
    if cxx is False:
        cxx = _cxx_compiler()
    if not cxx:
        return ("AOTInductor builds .pt2 packages with a C++ compiler and none was found (set CXX, or install g++ "
                "or clang++)")
    if device == "cuda":
        if cuda_home is False:
            from torch.utils.cpp_extension import CUDA_HOME

            cuda_home = CUDA_HOME
        if not cuda_home:
            return ("a CUDA .pt2 package needs the CUDA toolkit (nvcc) and none was found; set CUDA_HOME to it (e.g. "
                    "/usr/local/cuda) or put nvcc on PATH")
    return None


def _cxx_compiler() -> str | None:
    """The C++ compiler Inductor would use (its own lookup where this torch has one), else one on PATH."""
    import os

    with contextlib.suppress(Exception):
        from torch._inductor import cpp_builder

        found = cpp_builder.get_cpp_compiler()
        if found and (shutil.which(found) or os.path.isfile(found)):
            return found
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def inductor_configs(device: str, metadata: dict[str, str], max_autotune: bool | None = None) -> dict[str, Any]:
    """The inductor_configs of the compile: the metadata, and max-autotune on CUDA (default) or when asked."""
    configs: dict[str, Any] = {"aot_inductor.metadata": dict(metadata)}
    if (device == "cuda") if max_autotune is None else max_autotune:
        configs["max_autotune"] = True
    return configs


def pt2_metadata(base: dict[str, str], *, device: str, batch: str | int, fused: int, channels_last: bool,
                 max_autotune: bool) -> dict[str, str]:
    """`base` (metadata_for's dict) plus what a .pt2 package records about its compile."""
    meta = dict(base)
    meta.update({PREFIX + "format": FORMAT, PREFIX + "device": device, PREFIX + "batch": str(batch),
                 PREFIX + "torch": torch.__version__, PREFIX + "folded_bn": "true",
                 PREFIX + "fused_layers": str(fused), PREFIX + "channels_last": str(channels_last).lower(),
                 PREFIX + "max_autotune": str(max_autotune).lower()})
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        meta[PREFIX + "gpu"] = props.name
        meta[PREFIX + "compute_capability"] = f"{props.major}.{props.minor}"
    return meta


def _prepared(model: nn.Module, fused: bool) -> tuple[nn.Module, int]:
    if fused:
        from pfdeploy.kernels import count_fused, fuse_pf_layers

        ready = fuse_pf_layers(model)
        return ready, count_fused(ready)
    from pfdeploy.runtime.fold import fold_batchnorm

    return fold_batchnorm(model), 0


@contextlib.contextmanager
def _quiet_compiler():
    """The exporter's own known warnings (export.onnx) and the deprecation warnings torch's compiler modules
    raise about themselves when first imported; anything else reaches the user."""
    from pfdeploy.export.onnx import _quiet_exporter

    with _quiet_exporter(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated",
                                category=DeprecationWarning)
        yield


def exported_program(module: nn.Module, example: Tensor, dynamic: bool):
    """torch.export of `module` on `example` (batch dimension 0 dynamic over 1..MAX_BATCH when asked)."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic else None
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=shapes)


def pt2_from_model(
    model_or_name: nn.Module | str,
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    batch: str | int = "dynamic",
    img_size: int | None = None,
    precision: str = "fp32",
    input_format: str = "float-nchw",
    num_classes: int | None = None,
    overrides: dict[str, Any] | None = None,
    preprocess=None,
    device: str = "cpu",
    fused: bool = False,
    max_autotune: bool | None = None,
) -> Path:
    """Export and AOT-compile a registered model (name or module) into the package `output` (.pt2).

    Arguments as for `onnx_from_model` (random seeded weights without `checkpoint`, stated so), plus
    `device` ("cpu" or "cuda": where the package runs), `fused` (CUDA: pfdeploy's Triton kernel for the
    PF layers) and `max_autotune` (default: on for CUDA, off for the CPU).
    """
    from pfdeploy.calibration.preprocess import preprocess_for
    from pfdeploy.export.onnx import resolve_model
    from pfdeploy.export.preprocess import sample_input, wrap_input_format
    from pfdeploy.models import parameter_free_layers
    from pfdeploy.runtime.torch_backend import tf32_mode

    output = Path(output)
    _check_args(output, batch, precision, input_format, device, fused)
    check_output_file(output, "output")
    refuse_overwrite(output, [checkpoint], "output")
    model, seed = resolve_model(model_or_name, checkpoint, num_classes, overrides, img_size)
    cfg = model.pretrained_cfg
    if checkpoint is None:
        log.warning("WARNING: no --checkpoint given: %s is compiled with RANDOM weights (checkpoint_sha256=random)",
                    cfg.name)
    pre = preprocess or preprocess_for(cfg.name, model.img_size)
    if pre.size != model.img_size:
        raise PfdeployError(f"preprocess size {pre.size} differs from the model's input size {model.img_size}")
    with torch.no_grad():
        classes = int(model(sample_input("float-nchw", 1, model.img_size)).shape[-1])
    pf_layers = len(parameter_free_layers(model))
    ready, fused_count = _prepared(model, fused)
    channels_last = device == "cuda" and cfg.family in ("resnet",)
    dtype = DTYPES[precision]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    ready = ready.to(device, dtype=dtype, memory_format=memory_format)
    module = wrap_input_format(InferenceModule(ready, dtype, channels_last), input_format, pre).to(device).eval()
    autotune = (device == "cuda") if max_autotune is None else bool(max_autotune)
    extra = {"random_seed": seed} if seed is not None else {}
    if precision == "fp16":
        extra["fp16_io"] = "fp32"
    base = metadata_for(model=cfg.name, num_classes=classes, overrides=getattr(model, "overrides", {}),
                        checkpoint_sha256=sha256_file(checkpoint) if checkpoint else RANDOM,
                        preprocess=pre.to_dict(), input_format=input_format, precision=precision, opset="none",
                        pf_layers=pf_layers, **extra)
    meta = pt2_metadata(base, device=device, batch=batch, fused=fused_count, channels_last=channels_last,
                        max_autotune=autotune)
    example = sample_input(input_format, 2 if batch == "dynamic" else batch, model.img_size).to(device)
    log.info("exporting %s for %s (%s, %s, batch %s)%s", cfg.name, device, precision, input_format, batch,
             f", {fused_count} fused PF layers" if fused else "")
    # FP32 stays FP32 on CUDA: Inductor picks its matmul/convolution kernels with TF32 off.
    with tf32_mode(False) if device == "cuda" else contextlib.nullcontext(), _quiet_compiler():
        program = exported_program(module, example, batch == "dynamic")
        log.info("compiling with AOTInductor (%s)", "max-autotune" if autotune else "default")
        with temporary_dir("pt2") as scratch:
            built = torch._inductor.aoti_compile_and_package(
                program, package_path=str(scratch / output.name),
                inductor_configs=inductor_configs(device, meta, autotune))
            with atomic_path(output) as tmp:
                shutil.copyfile(built, tmp)
    log.info("wrote %s", output)
    return output


def read_pt2_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a .pt2 package (the `pfdeploy.*` entries and AOTInductor's own), read from the
    archive without loading its compiled code; one PfdeployError line for a file that is not one."""
    from pfdeploy.limits import json_from_text, require_regular_file

    fix = "export it with `pfdeploy export NAME --format pt2`"
    path = require_regular_file(path, ".pt2 package", fix)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if METADATA_ENTRY.match(n)]
            if not names:
                raise PfdeployError(f"{path} holds no AOTInductor model metadata; {fix}")
            info = archive.getinfo(names[0])
            if info.file_size > MAX_METADATA_BYTES:
                raise PfdeployError(f"{path}: its metadata is {info.file_size} bytes, more than a package "
                                    f"carries; {fix}")
            text = archive.read(info)
    except PfdeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile on a damaged archive: BadZipFile, zlib.error, EOFError,
        # NotImplementedError (an unknown compression), RuntimeError (encrypted), OSError, ...
        raise PfdeployError(f"{path} is not a readable .pt2 package ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); {fix}") from None
    meta = json_from_text(text, f"the metadata of {path}", fix)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise PfdeployError(f"the metadata of {path} is not a JSON object of strings; {fix}")
    return meta


def describe_pt2(path: str | Path) -> dict[str, Any]:
    """Size, sha256 and metadata of a package (what `pfdeploy export --format pt2` prints)."""
    return {"path": str(path), "bytes": Path(path).stat().st_size, "sha256": sha256_file(path),
            "metadata": read_pt2_metadata(path)}
