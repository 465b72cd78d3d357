"""Hand-made ONNX graphs of a few hundred bytes, for tests of file handling that need no PyTorch export.

`conv_classifier` is an image classifier in the shape pfdeploy's artifacts have (one NCHW float input
`input` with a dynamic batch, one `logits` output), with optional `pfdeploy.*` metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE, CLASSES = 8, 3
PREPROCESS = {"size": SIZE, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25]}


def conv_classifier(path: str | Path, metadata: dict[str, str] | None = None, seed: int = 0) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, input (batch, 3, 8, 8), 3 classes."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(0, 0.5, (CLASSES, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["input", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def pfdeploy_metadata(**changes: str) -> dict[str, str]:
    """`pfdeploy.*` metadata as an fp32 export of a ResNet records it (values overridable)."""
    meta = {"model": "r50", "num_classes": str(CLASSES), "overrides": "{}", "checkpoint_sha256": "random",
            "preprocess": json.dumps(PREPROCESS), "input_format": "float-nchw", "precision": "fp32",
            "opset": "17", "version": "0", "pf_layers": "0", "random_seed": "0"}
    meta.update(changes)
    return {f"pfdeploy.{k}": v for k, v in meta.items()}


def calibration_array(path: str | Path, count: int = 16, seed: int = 0) -> Path:
    """An .npy of `count` uint8 RGB images (count, 8, 8, 3): a calibration/eval source."""
    np.save(path, np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8))
    return Path(path)


def truncated_copy(source: str | Path, path: str | Path) -> Path:
    """The first half of `source`'s bytes (an interrupted copy or download)."""
    data = Path(source).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return Path(path)


def damaged_copy(source: str | Path, path: str | Path) -> Path:
    """`source` with its largest initializer holding half the bytes its shape declares (a valid protobuf)."""
    model = onnx.load(str(source))
    largest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    largest.raw_data = largest.raw_data[: len(largest.raw_data) // 2]
    onnx.save(model, str(path))
    return Path(path)
