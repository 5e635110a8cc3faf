"""Nearest-neighbour upsampling of (N, C, H, W) as one of (N * C, 1, H, W) planes, for onnxruntime's int8 graphs.

An int8 graph runs in NHWC (onnxruntime's `QLinearConv`s are channels-last, and its transpose optimizer pushes
the layout through every `Resize` between them). onnxruntime 1.32's uint8 nearest `Resize` in NHWC takes a
generic path: 6.1 ms for (8, 64, 56, 56) -> 112 x 112 against 1.2 ms for the special-cased 2x kernel in NCHW
(isolated, 2 threads); 23 ms of the 70 ms int8 depth default at batch 8 (profile). Reshaping the tensor to
(N * C, 1, H, W) planes first keeps the Resize out of the layout change: onnxruntime transposes to NCHW before
the Reshape and back after the second one, and the Resize itself runs the fast kernel. Measured on the depth
default (MobileNetV2 + NNConv5, 224 px, five nearest upsamplings): int8 / fp32 0.73x -> 0.65x at batch 1, 0.76x
-> 0.63x at batch 8 (one round-robin run). The same values: nearest-neighbour upsampling treats every channel
plane alone.

Applied to the float model before quantization (`quantize_int8`); the fp32 export is left as it is (in fp32
the Reshape form was slower: 11.0 -> 13.5 ms for a conv -> upsample -> conv block at batch 8).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tasks.common.deploy.onnx_graph import all_names, attribute, constant_value, inferred_dims, unique_name


def _keeps_batch_and_channels(
    resize: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], producer: dict[str, onnx.NodeProto]
) -> bool:
    """Whether the Resize leaves axes 0 and 1 alone: scales (1, 1, ., .), or sizes `Concat(shape(x)[:2], ...)`."""
    if len(resize.input) >= 4 and resize.input[3]:
        concat = producer.get(resize.input[3])
        if concat is None or concat.op_type != "Concat" or len(concat.input) < 2:
            return False
        lead = producer.get(concat.input[0])
        if lead is not None and lead.op_type == "Shape":  # Shape(x, start=0, end=2)
            span = (attribute(lead, "start", 0), attribute(lead, "end", None))
            return lead.input[0] == resize.input[0] and span == (0, 2)
        if lead is None or lead.op_type != "Slice" or len(lead.input) < 3:  # Slice(Shape(x), [0], [2])
            return False
        shape = producer.get(lead.input[0])
        bounds = [constant_value(name, initializers, producer) for name in lead.input[1:4] if name]
        return (
            shape is not None
            and shape.op_type == "Shape"
            and shape.input[0] == resize.input[0]
            and not shape.attribute
            and all(b is not None for b in bounds)
            and [b.tolist() for b in bounds[:2]] == [[0], [2]]
            and (len(bounds) < 3 or bounds[2].tolist() == [0])
        )
    if len(resize.input) < 3 or not resize.input[2]:
        return False
    scales = constant_value(resize.input[2], initializers, producer)
    return scales is not None and scales.size == 4 and scales[0] == 1 and scales[1] == 1


def resize_per_plane(model: onnx.ModelProto) -> int:
    """Rewrite (in place) each nearest `Resize` of a 4-D tensor with more than one channel as a per-plane one.

    `Resize(x)` -> `Reshape(Resize(Reshape(x, (-1, 1, H, W))), (N, C, H', W'))`, the Resize's attributes and its
    scales or (plane-wise) sizes kept. Only where the Resize leaves the batch and channel axes alone (scales
    (1, 1, ., .), or sizes built as `Concat(Shape(x)[0:2], ...)` as torch exports `F.interpolate(size=...)`).

    Args:
        model: A float ONNX model (opset >= 15: `Shape` with start and end).

    Returns:
        How many Resize nodes were rewritten.
    """
    graph = model.graph
    shapes = inferred_dims(model)
    producer = {o: n for n in graph.node for o in n.output}
    initializers = {t.name: t for t in graph.initializer}
    taken = all_names(model)
    constants: dict[str, str] = {}

    def constant(tag: str, values: list[int]) -> str:
        if tag not in constants:
            constants[tag] = unique_name(f"resize_per_plane_{tag}", taken)
            graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), constants[tag]))
        return constants[tag]

    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        shape = shapes.get(node.input[0]) if node.op_type == "Resize" else None
        mode = attribute(node, "mode", b"nearest") if shape is not None else None
        if (
            shape is None
            or (mode.decode() if isinstance(mode, bytes) else mode) != "nearest"
            or len(shape) != 4
            or shape[1] in (None, 1)
            or not _keeps_batch_and_channels(node, initializers, producer)
        ):
            new_nodes.append(node)
            continue
        x, y, base = node.input[0], node.output[0], node.name or "resize"

        def make(op: str, inputs: list[str], output: str, tag: str, base: str = base, **attrs) -> onnx.NodeProto:
            return helper.make_node(op, inputs, [output], name=unique_name(f"{base}_{tag}", taken), **attrs)

        planes, upsampled = unique_name(f"{base}_planes", taken), unique_name(f"{base}_planes_up", taken)
        new_nodes.append(make("Reshape", [x, constant("planes", [-1, 1, 0, 0])], planes, "to_planes"))
        resize = onnx.NodeProto()
        resize.CopyFrom(node)
        resize.input[0], resize.output[0] = planes, upsampled
        lead, tail = unique_name(f"{base}_lead_dims", taken), unique_name(f"{base}_hw", taken)
        if len(node.input) >= 4 and node.input[3]:  # sizes (N, C, H', W') -> (N * C, 1, H', W')
            out_shape, plane_sizes = node.input[3], unique_name(f"{base}_plane_sizes", taken)
            resize.input[3] = plane_sizes
            new_nodes += [
                make("Shape", [planes], lead, "planes_shape", start=0, end=2),
                make("Slice", [out_shape, constant("two", [2]), constant("four", [4])], tail, "sizes_hw"),
                make("Concat", [lead, tail], plane_sizes, "plane_sizes", axis=0),
                resize,
            ]
        else:  # scales (1, 1, sh, sw) apply to the planes as they are
            out_shape = unique_name(f"{base}_out_shape", taken)
            new_nodes += [
                resize,
                make("Shape", [x], lead, "input_shape", start=0, end=2),
                make("Shape", [upsampled], tail, "up_shape", start=2, end=4),
                make("Concat", [lead, tail], out_shape, "out_shape", axis=0),
            ]
        new_nodes.append(make("Reshape", [upsampled, out_shape], y, "from_planes"))
        count += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return count
