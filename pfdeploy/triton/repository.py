"""Write a Triton model repository: `<model>/config.pbtxt` and `<model>/1/model.onnx|model.plan`."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pfdeploy._io import atomic_path, write_bytes_atomic
from pfdeploy.errors import PfdeployError
from pfdeploy.triton.config import TritonOptions, config_from_spec, model_name_for, pbtxt_from_config
from pfdeploy.triton.spec import ArtifactSpec, spec_from_artifact

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


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        tmp.chmod(0o644)  # the server often runs as another user (containers)


def _provenance(spec: ArtifactSpec) -> tuple[str, ...]:
    meta = spec.metadata
    keys = ("pfdeploy.model", "pfdeploy.precision", "pfdeploy.input_format", "pfdeploy.checkpoint_sha256")
    described = ", ".join(f"{k.split('.', 1)[1]}={meta[k]}" for k in keys if k in meta)
    lines = [f"written by pfdeploy from {spec.path.name}"]
    if described:
        lines.append(described)
    return tuple(lines)


def model_from_artifact(artifact, repo, options: TritonOptions | None = None, name: str | None = None):
    """Add one artifact to the repository `repo` as model `name` (default: from the file name)."""
    options = options or TritonOptions()
    spec = spec_from_artifact(artifact)
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
    write_bytes_atomic(config_path, pbtxt_from_config(config, _provenance(spec)).encode())
    config_path.chmod(0o644)
    log.info("triton: %s (%s) -> %s", name, spec.platform, model_dir)
    return TritonModel(name, spec.platform, config_path, model_path, config)


def repository_from_artifacts(
    artifacts, repo, options: TritonOptions | None = None, names=None
) -> list[TritonModel]:
    """Write every artifact into the Triton model repository `repo`; returns what was written.

    All configs are computed first, so a bad artifact or option fails before anything is written.
    """
    options = options or TritonOptions()
    artifacts = [Path(a) for a in artifacts]
    if not artifacts:
        raise PfdeployError("give at least one artifact (.onnx or .plan)")
    names = list(names) if names else [None] * len(artifacts)
    if len(names) != len(artifacts):
        raise PfdeployError(f"{len(names)} names for {len(artifacts)} artifacts; give one name per artifact")
    specs = [spec_from_artifact(a) for a in artifacts]
    chosen = [n or model_name_for(s) for n, s in zip(names, specs, strict=True)]
    duplicates = sorted({n for n in chosen if chosen.count(n) > 1})
    if duplicates:
        raise PfdeployError(f"two artifacts map to the Triton model name(s) {duplicates}; rename one file")
    for spec, name in zip(specs, chosen, strict=True):
        config_from_spec(spec, name, options)  # validate every option before writing
    return [model_from_artifact(a, repo, options, n) for a, n in zip(artifacts, chosen, strict=True)]
