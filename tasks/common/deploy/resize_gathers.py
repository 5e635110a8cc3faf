"""Nearest-neighbour Resizes of an int8 graph as two uint8 Gathers in channels-last order, for onnxruntime.

An int8 graph runs in NHWC: onnxruntime's `QLinearConv`s are channels-last, and its transpose optimizer pushes the
layout through every `Resize` between them. onnxruntime 1.32's uint8 nearest `Resize` in NHWC takes a generic
path: 0.73 ms for (1, 56, 56, 64) -> 112 x 112 in the depth default's int8 run at batch 1, against ~0.08 ms for
its special-cased 2x kernel in NCHW (profile, 2 threads). Session 20 ran it on (N * C, 1, H, W) planes to reach
that kernel, but paid two transposes per upsampling for it (0.75 ms of the depth default's 6.4 ms int8 run at
batch 1, resizes and transposes together).

Here `DequantizeLinear -> Resize -> QuantizeLinear` (one scale and zero point: what onnxruntime runs as a uint8
Resize) becomes, on the uint8 tensor,

    Transpose(NHWC) -> Gather(rows, axis 1) -> Gather(columns, axis 2) -> Transpose(NCHW)

The two transposes cancel against those onnxruntime puts around its channels-last convolutions, and each Gather
copies whole rows (W * C bytes) or pixels (C bytes). The indices are computed in the graph with onnxruntime's
own formula for nearest / asymmetric / floor, what torch exports for `F.interpolate(mode="nearest")`:
`floor(i / scale)`, the scale out / in (float32) for sizes or the given one for scales, with out =
floor(in * scale); so the values are bit-identical to the Resize's (tested at dynamic sizes and non-integer
ratios), and dynamic sizes stay dynamic. Measured on the depth default (MobileNetV2 + NNConv5, 224 px, four
upsamplings; one round-robin run): int8 5.36 -> 4.87 ms at batch 1 (per-plane form), 50.0 -> 40.9 ms at batch 8;
int8 / fp32 0.64x -> 0.58x and 0.63x -> 0.52x.

Applied to the quantized model (`quantize_int8`, and the QAT export); the fp32 export keeps its Resizes (its
float NCHWc graph upsamples on the fast kernel already).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tasks.common.deploy.onnx_graph import (
    all_names,
    attribute,
    constant_value,
    inferred_dims,
    node_links,
    unique_name,
)


def _text(node: onnx.NodeProto, name: str, default: str) -> str:
    value = attribute(node, name, default)
    return value.decode() if isinstance(value, bytes) else value


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
            return _reads_same(lead.input[0], resize.input[0], producer) and (
                attribute(lead, "start", 0),
                attribute(lead, "end", None),
            ) == (0, 2)
        if lead is None or lead.op_type != "Slice" or len(lead.input) < 3:  # Slice(Shape(x), [0], [2])
            return False
        shape = producer.get(lead.input[0])
        bounds = [constant_value(name, initializers, producer) for name in lead.input[1:4] if name]
        return (
            shape is not None
            and shape.op_type == "Shape"
            and _reads_same(shape.input[0], resize.input[0], producer)
            and (attribute(shape, "start", 0), attribute(shape, "end", None)) == (0, None)  # the whole shape
            and all(b is not None for b in bounds)
            and [b.tolist() for b in bounds[:2]] == [[0], [2]]
            and (len(bounds) < 3 or bounds[2].tolist() == [0])
        )
    if len(resize.input) < 3 or not resize.input[2]:
        return False
    scales = constant_value(resize.input[2], initializers, producer)
    return scales is not None and scales.size == 4 and scales[0] == 1 and scales[1] == 1


def _reads_same(shape_input: str, resize_input: str, producer: dict[str, onnx.NodeProto]) -> bool:
    """The Shape reads the Resize's input, or the uint8 tensor it was dequantized from (`shapes_before_dequantize`)."""
    if shape_input == resize_input:
        return True
    dequantize = producer.get(resize_input)
    return dequantize is not None and dequantize.op_type == "DequantizeLinear" and dequantize.input[0] == shape_input


def _same_quantization(
    dequantize: onnx.NodeProto, quantize: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], producer
) -> bool:
    values = [constant_value(n, initializers, producer) for n in (*dequantize.input[1:3], *quantize.input[1:3])]
    if any(v is None for v in values) or len(dequantize.input) < 3 or len(quantize.input) < 3:
        return False
    scale_in, zero_in, scale_out, zero_out = values
    return scale_in.size == 1 and np.array_equal(scale_in, scale_out) and np.array_equal(zero_in, zero_out)


def gather_nearest_resizes(model: onnx.ModelProto) -> int:
    """Rewrite (in place) each uint8 nearest Resize of a quantized model as two Gathers in channels-last order.

    Matches `DequantizeLinear -> Resize -> QuantizeLinear` with one scale and zero point, a 4-D input, mode
    nearest with coordinate_transformation_mode asymmetric and nearest_mode floor, and scales (1, 1, ., .) or
    sizes built as `Concat(Shape(x)[0:2], ...)` (as torch exports `F.interpolate(size=...)`). Anything else is
    left as it is.

    Args:
        model: A QDQ model (`quantize_int8`'s, or the QAT export's), opset >= 15.

    Returns:
        How many Resize nodes were rewritten.
    """
    graph = model.graph
    producer, consumers = node_links(graph)
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    ranks = {name: len(dims) for name, dims in inferred_dims(model).items()}
    taken = all_names(model)
    constants: dict[str, str] = {}

    def constant(tag: str, value, dtype) -> str:
        if tag not in constants:
            constants[tag] = unique_name(f"resize_gather_{tag}", taken)
            graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), constants[tag]))
        return constants[tag]

    replaced: dict[int, list[onnx.NodeProto]] = {}  # the QuantizeLinear's id -> the nodes that replace the group
    removed: set[int] = set()
    for resize in graph.node:
        if resize.op_type != "Resize":
            continue
        dequantize = producer.get(resize.input[0])
        readers = consumers.get(resize.output[0], [])
        quantize = readers[0] if len(readers) == 1 and resize.output[0] not in outputs else None
        if (
            dequantize is None
            or dequantize.op_type != "DequantizeLinear"
            or quantize is None
            or quantize.op_type != "QuantizeLinear"
            or ranks.get(resize.input[0]) != 4
            or _text(resize, "mode", "nearest") != "nearest"
            or _text(resize, "coordinate_transformation_mode", "half_pixel") != "asymmetric"
            or _text(resize, "nearest_mode", "round_prefer_floor") != "floor"
            or not _same_quantization(dequantize, quantize, initializers, producer)
            or not _keeps_batch_and_channels(resize, initializers, producer)
        ):
            continue
        base = resize.name or "resize"
        nodes: list[onnx.NodeProto] = []

        def add(op: str, inputs: list[str], tag: str, base: str = base, nodes: list = nodes, **attrs) -> str:
            output = unique_name(f"{base}_{tag}", taken)
            nodes.append(helper.make_node(op, inputs, [output], name=unique_name(f"{base}_{tag}_node", taken), **attrs))
            return output

        x = dequantize.input[0]  # the uint8 tensor
        last = add("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])
        in_hw = add("Cast", [add("Shape", [x], "in_hw", start=2, end=4)], "in_hw_float", to=TensorProto.FLOAT)
        if len(resize.input) >= 4 and resize.input[3]:  # sizes: scale = out / in, in float32 as onnxruntime
            out_hw = add(
                "Slice", [resize.input[3], constant("two", [2], np.int64), constant("four", [4], np.int64)], "out_hw"
            )
            scale = add("Div", [add("Cast", [out_hw], "out_hw_float", to=TensorProto.FLOAT), in_hw], "scale")
        else:  # scales: out = floor(in * scale)
            scales = constant_value(resize.input[2], initializers, producer)
            scale = constant(f"scale_{scales[2]}_{scales[3]}", scales[2:4].astype(np.float32), np.float32)
            out_hw = add(
                "Cast",
                [add("Floor", [add("Mul", [in_hw, scale], "out_float")], "out_floor")],
                "out_hw",
                to=TensorProto.INT64,
            )
        for axis, tag in ((1, "rows"), (2, "columns")):  # NHWC axes of height and width
            index = constant(f"index_{axis - 1}", axis - 1, np.int64)
            count = add("Gather", [out_hw, index], f"{tag}_count", axis=0)
            positions = add(
                "Cast",
                [add("Range", [constant("zero", 0, np.int64), count, constant("one", 1, np.int64)], f"{tag}_range")],
                f"{tag}_positions",
                to=TensorProto.FLOAT,
            )
            source = add("Div", [positions, add("Gather", [scale, index], f"{tag}_scale", axis=0)], f"{tag}_source")
            indices = add("Cast", [add("Floor", [source], f"{tag}_floor")], f"{tag}_indices", to=TensorProto.INT64)
            last = add("Gather", [last, indices], tag, axis=axis)
        nodes.append(
            helper.make_node(
                "Transpose", [last], [quantize.output[0]], name=unique_name(f"{base}_nchw", taken), perm=[0, 3, 1, 2]
            )
        )
        replaced[id(quantize)] = nodes
        removed.add(id(resize))
        if len(consumers.get(dequantize.output[0], [])) == 1 and dequantize.output[0] not in outputs:
            removed.add(id(dequantize))
    if not replaced:
        return 0
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in replaced:
            new_nodes += replaced[id(node)]  # where the QuantizeLinear was: every input is computed by then
        elif id(node) not in removed:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return len(replaced)
