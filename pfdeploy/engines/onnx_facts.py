"""What the engine builder needs to know about an ONNX file, read with the onnx package only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pfdeploy._io import sha256_file
from pfdeploy._onnxfile import load_onnx
from pfdeploy._onnxgraph import GraphTensor, graph_inputs
from pfdeploy.choices import PRECISIONS
from pfdeploy.errors import PfdeployError

METADATA_PREFIX = "pfdeploy."


@dataclass(frozen=True)
class OnnxFacts:
    """The ONNX file as the engine builder sees it."""

    path: Path
    sha256: str
    metadata: dict
    inputs: tuple[GraphTensor, ...]
    precision: str
    precision_source: str  # "metadata" or "graph"


def precision_from_graph(model) -> str:
    """int8 if the graph holds QuantizeLinear/DequantizeLinear, fp16 if it holds FP16 tensors, else fp32."""
    import onnx

    ops = {node.op_type for node in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    f16 = onnx.TensorProto.FLOAT16
    typed = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    if any(v.type.tensor_type.elem_type == f16 for v in typed):
        return "fp16"
    if any(init.data_type == f16 for init in model.graph.initializer):
        return "fp16"
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == f16 for a in node.attribute):
            return "fp16"
    return "fp32"


def onnx_facts(path: str | os.PathLike) -> OnnxFacts:
    """Read sha256, pfdeploy.* metadata, inputs and precision of an ONNX file (no external data loaded)."""
    path = Path(path)
    model = load_onnx(path, external_data=False)
    metadata = {p.key: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}
    inputs = graph_inputs(model)
    if not inputs:
        raise PfdeployError(f"{path} has no graph inputs; it cannot be compiled into an engine")
    declared = metadata.get(f"{METADATA_PREFIX}precision")
    if declared in PRECISIONS:
        precision, source = declared, "metadata"
    else:
        precision, source = precision_from_graph(model), "graph"
    return OnnxFacts(path, sha256_file(path), metadata, inputs, precision, source)
