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
    check_model_name,
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
    """Files holding an ONNX model's external initializers (empty for a self-contained model), each a
    regular file inside the model's folder: an absolute or escaping location (`/etc/passwd`,
    `../../x`) is refused in one line, never copied (pfdeploy._onnxfile.external_data_files)."""
    if not spec.filename.endswith(".onnx"):
        return []
    from pfdeploy._onnxfile import external_data_files

    return external_data_files(spec.path)


SERVED_MODE = 0o644  # the server often runs as another user (containers): readable by all, whatever the umask


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, mode=SERVED_MODE) as tmp:
        shutil.copyfile(src, tmp)


WRITTEN_BY = "written by pfdeploy"  # the first comment of every config.pbtxt pfdeploy writes
VERSION = "1"  # the one version folder pfdeploy writes


def _check_model_folder(folder: Path) -> None:
    """Refuse a model folder holding what pfdeploy did not write: a config.pbtxt without its mark, or a
    version folder other than 1, which Triton's default version policy (latest) would serve instead."""
    config = folder / "config.pbtxt"
    if config.is_file():
        with open(config, "rb") as f:
            head = f.read(len(WRITTEN_BY) + 2)
        if head != f"# {WRITTEN_BY}".encode():
            raise PfdeployError(f"{folder} holds a config.pbtxt that pfdeploy did not write; choose another "
                                "--name or --repo, or move that model away")
    if folder.is_dir():
        foreign = sorted((p.name for p in folder.iterdir() if p.name.isdigit() and p.name != VERSION and p.is_dir()),
                         key=int)
        if foreign:
            raise PfdeployError(f"{folder} holds version folder(s) {', '.join(foreign)} that pfdeploy did not write; "
                                f"Triton would serve the latest of them instead of version {VERSION}: remove them, "
                                "or choose another --name or --repo")


def _check_repo_outside(repo, artifacts) -> None:
    """Refuse a --repo that is, or lies above, the folder holding an artifact: the artifacts would sit in the
    repository beside the models, where Triton reads every folder as a model."""
    root = Path(repo).resolve()
    for artifact in artifacts:
        folder = Path(artifact).resolve().parent
        if folder == root or root in folder.parents:
            raise PfdeployError(f"--repo {repo} holds the artifact {artifact}; write the repository to a folder "
                                "of its own, outside the artifacts' folder")


def _provenance(spec: ArtifactSpec) -> tuple[str, ...]:
    meta = spec.metadata
    keys = ("pfdeploy.model", "pfdeploy.precision", "pfdeploy.input_format", "pfdeploy.checkpoint_sha256")
    described = ", ".join(f"{k.split('.', 1)[1]}={meta[k]}" for k in keys if k in meta)
    lines = [f"{WRITTEN_BY} from {spec.path.name}"]
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
    name = model_name_for(spec) if name is None else check_model_name(name)
    config = config_from_spec(spec, name, options)
    text = pbtxt_from_config(config, _provenance(spec))
    model_dir = Path(repo) / name
    _check_repo_outside(repo, [spec.path])
    _check_model_folder(model_dir)
    version_dir = model_dir / VERSION
    model_path = version_dir / spec.filename
    for extra in _external_data_files(spec):
        if not extra.is_file():
            raise PfdeployError(f"{spec.path}: external data file {extra} is missing")
        _copy_atomic(extra, version_dir / extra.relative_to(spec.path.parent))  # where its locations say
    _copy_atomic(spec.path, model_path)
    config_path = model_dir / "config.pbtxt"
    write_bytes_atomic(config_path, text.encode("ascii"), mode=SERVED_MODE)
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
    chosen = [model_name_for(s) if n is None else check_model_name(n) for n, s in zip(names, specs, strict=True)]
    duplicates = sorted({n for n in chosen if chosen.count(n) > 1})
    if duplicates:
        raise PfdeployError(f"two artifacts map to the Triton model name(s) {duplicates}; rename one file")
    check_output_dir(repo, "--repo")
    extras = [_external_data_files(spec) for spec in specs]
    inputs = [*artifacts, *(file for files in extras for file in files)]
    for spec, name, files in zip(specs, chosen, extras, strict=True):
        pbtxt_from_config(config_from_spec(spec, name, options), _provenance(spec))  # every option, before writing
        folder = Path(repo) / name
        for path in [folder / "1" / spec.filename, folder / "config.pbtxt", *(folder / "1" / f.name for f in files)]:
            refuse_overwrite(path, inputs, "the repository file")  # e.g. --repo around the artifacts
    _check_repo_outside(repo, artifacts)
    for name in chosen:
        _check_model_folder(Path(repo) / name)
    return [model_from_artifact(a, repo, options, n, b) for a, n, b in zip(artifacts, chosen, serving, strict=True)]
