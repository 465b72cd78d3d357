"""Reading an ONNX graph's structure, one definition each: its inputs and outputs (`GraphTensor`),
and which node produces and which nodes consume every tensor (`producers`, `consumers`).

The engine builder, Triton, `info --onnx`, calibration and the ONNX Runtime session read graph
inputs through `graph_inputs`; the Q/DQ passes and the attention fusion walk graphs through
`producers`/`consumers`.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class GraphTensor:
    """One graph input or output: name, dims (int when fixed, the symbol's name or None when not)
    and element type as a NumPy dtype name ("float32", "uint8", ...; "?" when undeclared)."""

    name: str
    dims: tuple
    dtype: str

    @property
    def fixed_batch(self) -> int | None:
        """The leading (batch) dimension when it is a fixed positive size, else None."""
        first = self.dims[0] if self.dims else None
        return first if isinstance(first, int) and first > 0 else None


def tensor_of(value: onnx.ValueInfoProto) -> GraphTensor:
    """The GraphTensor of a graph input/output declaration."""
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "?"
    return GraphTensor(value.name, dims, dtype)


def graphs_of(graph: onnx.GraphProto):
    """`graph` and every subgraph of its nodes' attributes (If, Loop, Scan bodies, nested ones too), depth first."""
    stack = [graph]
    while stack:
        current = stack.pop()
        yield current
        for node in current.node:
            for attr in node.attribute:
                stack.extend([attr.g] if attr.HasField("g") else [])
                stack.extend(attr.graphs)


def graph_inputs(model: onnx.ModelProto) -> tuple[GraphTensor, ...]:
    """The graph's real inputs (initializers listed as inputs, as old exporters wrote them, left out)."""
    initializers = {init.name for init in model.graph.initializer}
    return tuple(tensor_of(v) for v in model.graph.input if v.name not in initializers)


def graph_outputs(model: onnx.ModelProto) -> tuple[GraphTensor, ...]:
    """The graph's outputs."""
    return tuple(tensor_of(v) for v in model.graph.output)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that computes it (graph inputs and initializers have none)."""
    return {name: node for node in graph.node for name in node.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order (a node reading it twice appears twice)."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users
