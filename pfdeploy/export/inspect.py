"""Describing an ONNX file: IO, opset, metadata, node counts by op type, parameters."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pfdeploy._onnxgraph import tensor_of

SHAPE_SOURCES = ("Shape", "Size")


def shape_arithmetic(model: onnx.ModelProto) -> int:
    """Nodes that read tensor shapes at run time: Shape/Size and everything computed from them."""
    tainted: set[str] = set()
    count = 0
    for node in model.graph.node:  # topologically sorted
        if node.op_type in SHAPE_SOURCES or any(name in tainted for name in node.input if node.op_type != "Reshape"):
            tainted.update(node.output)
            count += 1
    return count


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = tensor_of(value)
    return {"name": tensor.name, "dtype": tensor.dtype, "shape": [0 if d is None else d for d in tensor.dims]}


def describe_model(model: onnx.ModelProto) -> dict[str, Any]:
    """The description of a loaded ModelProto (see `describe_onnx`)."""
    ops = Counter(node.op_type for node in model.graph.node)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    dtypes = Counter(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in model.graph.initializer)
    return {
        "inputs": [_value_info(v) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "metadata": {p.key: p.value for p in model.metadata_props},
        "nodes": len(model.graph.node),
        "node_counts": dict(ops.most_common()),
        "shape_ops": shape_arithmetic(model),
        "initializers": len(model.graph.initializer),
        "initializer_dtypes": dict(dtypes),
        "parameters": params,
    }


def describe_onnx(path: str | Path) -> dict[str, Any]:
    """IO names/dtypes/shapes, opsets, pfdeploy metadata, node counts per op type and parameters."""
    from pfdeploy._onnxfile import load_onnx

    path = Path(path)
    model = load_onnx(path)
    return {"path": str(path), "bytes": path.stat().st_size, **describe_model(model)}
