"""The `pfdeploy.*` metadata_props every ONNX artifact carries, and rebuilding its PyTorch model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import onnx

from pfdeploy import __version__
from pfdeploy.calibration.preprocess import metadata_json, preprocess_from_metadata
from pfdeploy.errors import PfdeployError

log = logging.getLogger(__name__)

PREFIX = "pfdeploy."
RANDOM = "random"
__all__ = ["PREFIX", "RANDOM", "REQUIRED", "metadata_for", "metadata_json", "model_from_metadata",
           "overrides_from_metadata", "preprocess_from_metadata", "read_metadata", "require_pfdeploy_metadata",
           "set_metadata"]
REQUIRED = (
    "model", "num_classes", "overrides", "checkpoint_sha256", "preprocess",
    "input_format", "precision", "opset", "version", "pf_layers",
)


def metadata_for(
    *,
    model: str,
    num_classes: int,
    overrides: dict[str, Any],
    checkpoint_sha256: str,
    preprocess: dict[str, Any],
    input_format: str,
    precision: str,
    opset: int,
    pf_layers: int,
    **extra: Any,
) -> dict[str, str]:
    """The metadata dict (keys with the `pfdeploy.` prefix, string values) of an exported graph."""
    values = {
        "model": model,
        "num_classes": num_classes,
        "overrides": json.dumps(overrides, sort_keys=True),
        "checkpoint_sha256": checkpoint_sha256,
        "preprocess": json.dumps(preprocess, sort_keys=True),
        "input_format": input_format,
        "precision": precision,
        "opset": opset,
        "version": __version__,
        "pf_layers": pf_layers,
        **extra,
    }
    return {PREFIX + key: str(value) for key, value in values.items()}


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> onnx.ModelProto:
    """Replace or add `metadata` entries in `model.metadata_props` (in place; returns the model)."""
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    return model


def read_metadata(path: str | Path | onnx.ModelProto) -> dict[str, str]:
    """All metadata_props of an ONNX file (or loaded model) as a dict."""
    if isinstance(path, onnx.ModelProto):
        model = path
    else:
        from pfdeploy._onnxfile import load_onnx

        model = load_onnx(path, external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def require_pfdeploy_metadata(meta: dict[str, str], source: str = "artifact") -> None:
    """Raise a PfdeployError naming the missing `pfdeploy.*` keys of an artifact."""
    missing = [PREFIX + k for k in REQUIRED if PREFIX + k not in meta]
    if missing:
        raise PfdeployError(
            f"{source} lacks pfdeploy metadata ({', '.join(missing[:3])}); "
            "it was not exported by `pfdeploy export`, re-export it"
        )


def overrides_from_metadata(meta: dict[str, str], source: str = "artifact") -> dict[str, Any]:
    """The create_model overrides recorded in `pfdeploy.overrides` (a JSON object)."""
    overrides = metadata_json(meta, "overrides", source, {})
    if not isinstance(overrides, dict):
        raise PfdeployError(f"{source}: metadata {PREFIX}overrides must be a JSON object, got "
                            f"{type(overrides).__name__}; re-export it with `pfdeploy export`")
    return overrides


def model_from_metadata(meta: dict[str, str], checkpoint: str | Path | None = None):
    """The PyTorch model an artifact was exported from, rebuilt from its metadata (eval mode).

    With `checkpoint`, its sha256 must match the recorded one. Without it, an artifact exported
    with random weights is rebuilt from its recorded seed; one exported from a checkpoint needs it.
    """
    import torch

    from pfdeploy._io import sha256_file
    from pfdeploy.models import create_model, load_checkpoint

    require_pfdeploy_metadata(meta)
    name = meta[PREFIX + "model"]
    recorded = meta[PREFIX + "checkpoint_sha256"]
    overrides = overrides_from_metadata(meta)
    try:
        num_classes = int(meta[PREFIX + "num_classes"])
    except ValueError:
        raise PfdeployError(f"metadata {PREFIX}num_classes is {meta[PREFIX + 'num_classes']!r}, not an "
                            "integer; re-export the artifact with `pfdeploy export`") from None
    if checkpoint is not None:
        digest = sha256_file(checkpoint) if Path(checkpoint).is_file() else None
        if digest is not None and recorded not in (RANDOM, digest):
            raise PfdeployError(
                f"checkpoint {checkpoint} (sha256 {digest[:12]}) is not the one the artifact was "
                f"exported from (sha256 {recorded[:12]}); pass that checkpoint"
            )
        return load_checkpoint(create_model(name, num_classes=num_classes, **overrides), checkpoint)
    if recorded != RANDOM:
        raise PfdeployError(
            f"the artifact was exported from a checkpoint (sha256 {recorded[:12]}); "
            "pass it with --checkpoint PATH"
        )
    seed = meta.get(PREFIX + "random_seed")
    if seed is None:
        raise PfdeployError(
            "the artifact holds random weights of an in-memory model that cannot be rebuilt; "
            "save the weights and pass them with --checkpoint PATH"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return create_model(name, num_classes=num_classes, **overrides)
