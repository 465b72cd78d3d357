"""Graph structure read once: inputs/outputs as GraphTensor, producer and consumer maps."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from pfdeploy._onnxgraph import consumers, graph_inputs, graph_outputs, producers


def _model(batch):
    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu"),
             helper.make_node("Add", ["h", "y"], ["z"], name="add")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [batch, 4]),
                     helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 2])],  # an initializer listed as input
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 2])], [weight])
    return helper.make_model(graph)


def test_graph_inputs_leave_out_initializers_and_read_dims_and_types():
    (x,) = graph_inputs(_model("N"))
    assert (x.name, x.dims, x.dtype, x.fixed_batch) == ("x", ("N", 4), "uint8", None)
    assert graph_inputs(_model(3))[0].fixed_batch == 3
    assert [(t.name, t.dims, t.dtype) for t in graph_outputs(_model(3))] == [("z", (3, 2), "float32")]


def test_producer_and_consumer_maps():
    graph = _model(1).graph
    made_by, used_by = producers(graph), consumers(graph)
    assert made_by["h"].name == "mm" and "x" not in made_by and "w" not in made_by
    assert [n.name for n in used_by["h"]] == ["relu", "add"] and [n.name for n in used_by["w"]] == ["mm"]
    assert "z" not in used_by
