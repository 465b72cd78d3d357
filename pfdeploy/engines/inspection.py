"""Engine layer information (TensorRT engine inspector JSON) saved beside the plan. Pure."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pfdeploy._io import write_bytes_atomic
from pfdeploy.errors import PfdeployError


def layer_info_path(plan_path: str | os.PathLike) -> Path:
    """`model.plan` -> `model.plan.layers.json`."""
    return Path(f"{os.fspath(plan_path)}.layers.json")


def layer_summary(info: dict) -> dict:
    """Number of layers and their count per layer type, from inspector JSON (TensorRT 10 and 11); anything
    that is not {"Layers": [{"LayerType": ...}, ...]} counts as no layers or as type "?"."""
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    layers = layers if isinstance(layers, list) else []
    kinds: dict[str, int] = {}
    for layer in layers:
        kind = layer.get("LayerType", "?") if isinstance(layer, dict) else "?"
        kind = kind if isinstance(kind, str) else "?"
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"layers": len(layers), "layer_types": dict(sorted(kinds.items()))}


def write_layer_info(plan_path: str | os.PathLike, text: str) -> Path:
    """Validate the inspector's JSON text and write it, indented, beside the plan atomically."""
    try:
        info = json.loads(text)
        data = json.dumps(info, indent=2) + "\n"
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's parser goes
        raise PfdeployError(f"TensorRT's engine inspector returned invalid JSON ({str(exc)[:120]})") from None
    return write_bytes_atomic(layer_info_path(plan_path), data.encode())
