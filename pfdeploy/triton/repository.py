"""Write a Triton model repository: `<model>/config.pbtxt` and `<model>/1/model.onnx|model.plan`."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from pfdeploy._io import atomic_path, check_output_dir, refuse_overwrite, write_bytes_atomic
from pfdeploy.errors import PfdeployError
from pfdeploy.triton.config import (
    OPENVINO_BACKEND,
    SERVING_BACKENDS,
    TritonOptions,
    config_from_spec,
    model_name_for,
    pbtxt_from_config,
)
from pfdeploy.triton.spec import ONNX_PLATFORM, ArtifactSpec, spec_from_artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonModel:
    """One model written into a repository."""

    name: str
    platform: str
    config_path: Path
    model_path: Path
    config: dict


def _external_data_files(spec: ArtifactSpec) -> list[Path]:
    """Files holding an ONNX model's external initializers (empty for a self-contained model)."""
    if not spec.filename.endswith(".onnx"):
        return []
    import onnx

    model = onnx.load(str(spec.path), load_external_data=False)
    locations = {
        entry.value
        for init in model.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }
    return [spec.path.parent / loc for loc in sorted(locations)]


SERVED_MODE = 0o644  # the server often runs as another user (containers): readable by all, whatever the umask


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst, mode=SERVED_MODE) as tmp:
        shutil.copyfile(src, tmp)


def _provenance(spec: ArtifactSpec) -> tuple[str, ...]:
    meta = spec.metadata
    keys = ("pfdeploy.model", "pfdeploy.precision", "pfdeploy.input_format", "pfdeploy.checkpoint_sha256")
    described = ", ".join(f"{k.split('.', 1)[1]}={meta[k]}" for k in keys if k in meta)
    lines = [f"written by pfdeploy from {spec.path.name}"]
    if described:
        lines.append(described)
    return tuple(lines)


def spec_for_backend(artifact, backend: str | None = None) -> ArtifactSpec:
    """The ArtifactSpec of `artifact` as Triton will serve it: an .onnx file by Triton's ONNX Runtime
    backend (default) or, with backend "openvino", by its OpenVINO backend; engines by TensorRT."""
    spec = spec_from_artifact(artifact)
    if backend in (None, "onnxruntime"):
        return spec
    if backend not in SERVING_BACKENDS:
        raise PfdeployError(f"unknown serving backend {backend!r}; use one of {', '.join(SERVING_BACKENDS)}")
    if spec.platform != ONNX_PLATFORM:
        raise PfdeployError(f"{spec.path}: Triton's OpenVINO backend serves .onnx files, not TensorRT engines")
    return replace(spec, platform=OPENVINO_BACKEND)


def model_from_artifact(artifact, repo, options: TritonOptions | None = None, name: str | None = None,
                        backend: str | None = None):
    """Add one artifact to the repository `repo` as model `name` (default: from the file name), served
    by `backend` ("onnxruntime" or "openvino" for an .onnx file; see `spec_for_backend`)."""
    options = options or TritonOptions()
    spec = spec_for_backend(artifact, backend)
    name = name or model_name_for(spec)
    config = config_from_spec(spec, name, options)
    model_dir = Path(repo) / name
    version_dir = model_dir / "1"
    model_path = version_dir / spec.filename
    for extra in _external_data_files(spec):
        if not extra.is_file():
            raise PfdeployError(f"{spec.path}: external data file {extra} is missing")
        _copy_atomic(extra, version_dir / extra.name)
    _copy_atomic(spec.path, model_path)
    config_path = model_dir / "config.pbtxt"
    write_bytes_atomic(config_path, pbtxt_from_config(config, _provenance(spec)).encode(), mode=SERVED_MODE)
    log.info("triton: %s (%s) -> %s", name, spec.platform, model_dir)
    return TritonModel(name, spec.platform, config_path, model_path, config)


def _backends_for(artifacts: list[Path], backends) -> list[str | None]:
    """One serving backend per artifact: none given -> defaults; one -> every .onnx file; else one each."""
    if not backends:
        return [None] * len(artifacts)
    backends = list(backends)
    if len(backends) == 1:
        return [backends[0] if a.suffix.lower() == ".onnx" else None for a in artifacts]
    if len(backends) != len(artifacts):
        raise PfdeployError(f"{len(backends)} backends for {len(artifacts)} artifacts; give one for all or one "
                            "per artifact")
    return backends


def repository_from_artifacts(
    artifacts, repo, options: TritonOptions | None = None, names=None, backends=None
) -> list[TritonModel]:
    """Write every artifact into the Triton model repository `repo`; returns what was written.

    `backends`: how Triton serves each .onnx file ("onnxruntime", the default, or "openvino"), one
    for every .onnx file or one per artifact. All configs are computed first, so a bad artifact or
    option fails before anything is written.
    """
    options = options or TritonOptions()
    artifacts = [Path(a) for a in artifacts]
    if not artifacts:
        raise PfdeployError("give at least one artifact (.onnx or .plan)")
    names = list(names) if names else [None] * len(artifacts)
    if len(names) != len(artifacts):
        raise PfdeployError(f"{len(names)} names for {len(artifacts)} artifacts; give one name per artifact")
    serving = _backends_for(artifacts, backends)
    specs = [spec_for_backend(a, b) for a, b in zip(artifacts, serving, strict=True)]
    chosen = [n or model_name_for(s) for n, s in zip(names, specs, strict=True)]
    duplicates = sorted({n for n in chosen if chosen.count(n) > 1})
    if duplicates:
        raise PfdeployError(f"two artifacts map to the Triton model name(s) {duplicates}; rename one file")
    check_output_dir(repo, "--repo")
    extras = [_external_data_files(spec) for spec in specs]
    inputs = [*artifacts, *(file for files in extras for file in files)]
    for spec, name, files in zip(specs, chosen, extras, strict=True):
        config_from_spec(spec, name, options)  # validate every option before writing
        folder = Path(repo) / name
        for path in [folder / "1" / spec.filename, folder / "config.pbtxt", *(folder / "1" / f.name for f in files)]:
            refuse_overwrite(path, inputs, "the repository file")  # e.g. --repo around the artifacts
    return [model_from_artifact(a, repo, options, n, b) for a, n, b in zip(artifacts, chosen, serving, strict=True)]
