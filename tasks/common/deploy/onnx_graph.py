"""Lookups shared by the ONNX graph rewrites (`quantize`, `channel_padding`, `resize_gathers`, `input_quantization`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_<k>` for the first k that is not in `taken`; the name is added to `taken`."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every node, initializer and value name of `model` (new names must avoid them)."""
    graph = model.graph
    names = {n.name for n in graph.node} | {t.name for t in graph.initializer}
    return names | {v for n in graph.node for v in (*n.input, *n.output)}


def node_links(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """(producer, consumers): the node writing each value, and the nodes reading it (in graph order)."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def drop_unused_constants(model: onnx.ModelProto) -> None:
    """Remove (in place) the initializers and `Constant` nodes that no node, graph input or graph output reads.

    For the rewrites that remove nodes: what only those nodes read goes with them.
    """
    graph = model.graph
    used = {v for n in graph.node for v in n.input} | {o.name for o in graph.output} | {i.name for i in graph.input}
    nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def inferred_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each value's dimensions from ONNX shape inference (None where a dimension is symbolic or unknown).

    Values whose rank shape inference could not find are left out.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
        if v.type.tensor_type.HasField("shape")
    }


def attribute(node: onnx.NodeProto, name: str, default):
    """The value of `node`'s attribute `name`, or `default`."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def constant_value(
    name: str, initializers: dict[str, onnx.TensorProto], producer: dict[str, onnx.NodeProto]
) -> np.ndarray | None:
    """The value of `name` if it is an initializer or a `Constant` node's output, else None."""
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producer.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    return None
