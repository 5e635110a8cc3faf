"""Static int8 post-training quantization of an ONNX model with onnxruntime, tuned for mobile CNN blocks.

The recipe (measured on onnxruntime 1.32, x86-64 with AVX512-VNNI; docs/deploy.md has the figures):

- QDQ format, weights int8 per output channel (symmetric), activations **uint8** (asymmetric), no
  `reduce_range`. onnxruntime's own default, int8 activations (S8S8), is the main reason int8 MobileNetV3 runs
  *slower* than float on x86: its CPU kernels fuse only part of the S8S8 `DequantizeLinear -> Conv ->
  QuantizeLinear` groups into `QLinearConv` (13 of 15 depthwise and 21 of 51 other convolutions of LR-ASPP
  MobileNetV3-L stay float convolutions with a dequantize before and a quantize after); with uint8 activations
  all of them fuse (VNNI's `vpdpbusd` multiplies uint8 by int8). `reduce_range` (7-bit) only avoids overflow of
  the pre-VNNI AVX2 instruction, so it would cost accuracy here for nothing.
- Hard-swish is rewritten before quantization as `x * Clip(x + 3, 0, 6) * (1/6)` (see `rewrite_hard_swish`):
  onnxruntime has no quantized HardSwish/HardSigmoid kernel, so left alone each hard-swish becomes a float
  island (`DequantizeLinear -> HardSigmoid -> QuantizeLinear -> QLinearMul`) that reads and writes the full
  activation tensor three extra times in float; the rewrite runs as `QLinearAdd`, `QLinearMul` and the Clip is
  absorbed into the quantization range, all in uint8. Its `* 1/6` goes into the readers' convolution weights, or
  after quantization into the output's quantization scale (`fold_scalar_multiplications`).
- timm's squeeze-excite mean, `ReduceMean` over height and width, is rewritten as the equal `GlobalAveragePool`
  (`rewrite_spatial_mean`), which runs as `QLinearGlobalAveragePool` in uint8; ReduceMean has no int8 kernel
  and dequantized the full expanded tensor of every squeeze-excite block.
- Graph forms for onnxruntime's int8 kernels, each the same function (measured gains in their modules):
  zero channels where MLAS's fast int8 convolutions need them (`channel_padding`), and after quantization
  nearest upsamplings as uint8 Gathers in channels-last order (`resize_gathers`) and the image normalization
  folded into the stem input's QuantizeLinear (`input_quantization`).
- `float_nodes` keeps in float what onnxruntime would run in float anyway and what only adds a
  quantize/dequantize pair (the docstring says which and why).
- Calibration: MinMax over batches of the task's own training images (`quantize_int8(..., batches)`);
  `calibration_method="percentile"` calibrates on histograms of the network part instead (`calibration`).
  Measured on the three real checkpoints, percentile 99.999 was no better than MinMax within the test sets'
  noise (docs/deploy.md "Calibration"), so MinMax, one pass, stays the default.

`quant_pre_process` (onnxruntime's symbolic shape inference + basic graph optimization) runs first, as
onnxruntime recommends; the output file is written atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tasks.common.deploy.input_quantization import fold_input_normalization
from tasks.common.deploy.onnx_graph import all_names, drop_unused_constants, inferred_dims, node_links, unique_name
from tasks.common.deploy.resize_gathers import gather_nearest_resizes
from tasks.common.files import atomic_path

# Ops that only move or reshape data. A chain of them that ends in a graph output stays float: quantizing it
# would quantize the network's final outputs (logits, box offsets) for no speed-up.
PASS_THROUGH_OPS = frozenset(
    {"Reshape", "Transpose", "Concat", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Split", "Identity"}
)


@dataclass(frozen=True)
class QuantizationReport:
    """What `quantize_int8` wrote.

    Attributes:
        path: The int8 model.
        float_nodes: Names of the nodes kept out of quantization by `float_nodes` (plus any given).
        hard_swish_rewritten: Hard-swish activations rewritten into int8-fusable ops.
        calibration_batches: Batches the activation ranges were calibrated on.
        calibration_method: "minmax" or "percentile 99.999" (with its percentile).
        depthwise_widened: Depthwise convolutions given zero channels up to a multiple of 16.
        inputs_widened: Convolutions (the RGB stem) given zero input channels up to 4.
        normalization_folded: The image normalization was folded into the stem input's QuantizeLinear.
        resizes_as_gathers: Nearest-neighbour Resize nodes rewritten as uint8 Gathers (`resize_gathers`).
        scalings_folded: Multiplications by a constant folded into a quantization (`fold_scalar_multiplications`).
    """

    path: Path
    float_nodes: tuple[str, ...]
    hard_swish_rewritten: int
    calibration_batches: int
    calibration_method: str = "minmax"
    depthwise_widened: int = 0
    inputs_widened: int = 0
    normalization_folded: bool = False
    resizes_as_gathers: int = 0
    scalings_folded: int = 0

    def format(self) -> str:
        """One line for the export summary."""
        return (
            f"int8: calibrated ({self.calibration_method}) on {self.calibration_batches} training batches; "
            f"{len(self.float_nodes)} nodes kept float, {self.hard_swish_rewritten} hard-swish rewritten, "
            f"{self.depthwise_widened} depthwise and {self.inputs_widened} stem convolutions widened"
            + (", normalization folded into the input quantization" if self.normalization_folded else "")
            + (f", {self.resizes_as_gathers} nearest resizes as gathers" if self.resizes_as_gathers else "")
            + (f", {self.scalings_folded} constant scalings folded into quantizations" if self.scalings_folded else "")
        )


def _hard_sigmoid_params(node: onnx.NodeProto) -> tuple[float, float]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))


def _fold_scale_into_convs(
    graph: onnx.GraphProto, tensor: str, scale: float, consumers: dict[str, list[onnx.NodeProto]], outputs: set[str]
) -> bool:
    """Multiply the weights of every Conv reading `tensor` by `scale`, if all its readers are such Convs.

    Conv(W * scale, t) + b == Conv(W, t * scale) + b, so the `* scale` before them can go. Only when each Conv's
    weight is an initializer that no other node reads (else the fold would change that node too).
    """
    readers = consumers.get(tensor, [])
    if not readers or tensor in outputs:
        return False
    initializers = {t.name: t for t in graph.initializer}
    for node in readers:
        if node.op_type != "Conv" or node.input[0] != tensor or node.input[1] not in initializers:
            return False
        if len(consumers.get(node.input[1], [])) != 1:
            return False
    for node in readers:
        weight = initializers[node.input[1]]
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(scale), weight.name))
    return True


def rewrite_hard_swish(model: onnx.ModelProto) -> int:
    """Rewrite every hard-swish of `model` (in place) as `Mul(Mul(x, Clip(Add(x, 3), 0, 6)), 1/6)`.

    Where every reader of the hard-swish is a Conv (the depthwise convolution after an expansion, the
    projection after a depthwise convolution), the `* 1/6` is folded into their weights instead: one int8 op
    fewer per activation, and exact.

    Matches `HardSwish(x)` and its decomposed form `Mul(x, HardSigmoid(x))` with alpha 1/6 and beta 0.5 (what
    onnxruntime's graph optimizer and some exporters produce). The result is the same function in float
    (h-swish(x) = x * relu6(x + 3) / 6), but every op in it has a uint8 kernel in onnxruntime (`QLinearAdd`,
    `QLinearMul`; the Clip becomes the quantization range of its input), where `HardSwish` and `HardSigmoid`
    have none and would run in float between a dequantize and a quantize of the full activation tensor.
    A HardSigmoid that gates something else (the squeeze-excite gate, on a (N, C, 1, 1) tensor) is left as is:
    it is tiny, and the large Mul it feeds is quantized anyway.

    Args:
        model: An ONNX model (opset >= 14).

    Returns:
        How many hard-swish activations were rewritten.
    """
    graph = model.graph
    taken = {n.name for n in graph.node} | {t.name for t in graph.initializer}
    taken |= {v for n in graph.node for v in (*n.input, *n.output)}
    _, consumers = node_links(graph)
    graph_outputs = {o.name for o in graph.output}

    # (x, y, nodes to remove) for each hard-swish y = h-swish(x)
    matches: list[tuple[str, str, list[onnx.NodeProto]]] = []
    for node in graph.node:
        if node.op_type == "HardSwish":
            matches.append((node.input[0], node.output[0], [node]))
        elif node.op_type == "HardSigmoid" and np.allclose(_hard_sigmoid_params(node), (1 / 6, 0.5)):
            x, gate = node.input[0], node.output[0]
            users = consumers.get(gate, [])
            if len(users) == 1 and users[0].op_type == "Mul" and set(users[0].input) == {x, gate}:
                if gate not in graph_outputs:
                    matches.append((x, users[0].output[0], [node, users[0]]))
    if not matches:
        return 0

    constants = {}
    for value, tag in ((3.0, "three"), (0.0, "zero"), (6.0, "six"), (1.0 / 6.0, "one_sixth")):
        name = unique_name(f"hard_swish_{tag}", taken)
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
        constants[tag] = name

    replaced = {id(n) for _, _, nodes in matches for n in nodes}
    replacement = {id(nodes[-1]): (x, y, nodes[0].name or "hard_swish") for x, y, nodes in matches}
    new_nodes = []
    for node in graph.node:
        if id(node) not in replaced:
            new_nodes.append(node)
            continue
        if id(node) not in replacement:  # the HardSigmoid of a decomposed pair: emitted with its Mul
            continue
        x, y, base = replacement[id(node)]
        shifted, clipped, product = (unique_name(f"{base}_{s}_output", taken) for s in ("add3", "relu6", "mul"))
        new_nodes += [
            helper.make_node("Add", [x, constants["three"]], [shifted], name=unique_name(f"{base}_add3", taken)),
            helper.make_node(
                "Clip",
                [shifted, constants["zero"], constants["six"]],
                [clipped],
                name=unique_name(f"{base}_relu6", taken),
            ),
        ]
        if _fold_scale_into_convs(graph, y, 1.0 / 6.0, consumers, graph_outputs):
            new_nodes.append(helper.make_node("Mul", [x, clipped], [y], name=unique_name(f"{base}_mul", taken)))
        else:
            new_nodes += [
                helper.make_node("Mul", [x, clipped], [product], name=unique_name(f"{base}_mul", taken)),
                helper.make_node(
                    "Mul", [product, constants["one_sixth"]], [y], name=unique_name(f"{base}_div6", taken)
                ),
            ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    return len(matches)


def rewrite_spatial_mean(model: onnx.ModelProto) -> int:
    """Rewrite every mean over height and width of a 4-D tensor (in place) as `GlobalAveragePool`.

    `x.mean((2, 3), keepdim=True)` (timm's squeeze-excite, EfficientNet and MobileNetV3 blocks) exports as
    `ReduceMean(axes=[2, 3], keepdims=1)`, the same values as `GlobalAveragePool`. onnxruntime has no int8
    ReduceMean, so each one is a float island that dequantizes the full expanded activation tensor; its QDQ
    `GlobalAveragePool` runs as `QLinearGlobalAveragePool` in uint8 (torchvision's `adaptive_avg_pool2d`
    squeeze-excite exports as `GlobalAveragePool` already).

    Args:
        model: An ONNX model (axes as an attribute, opset < 18, or as a constant input, opset >= 18).

    Returns:
        How many means were rewritten.
    """
    graph = model.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ranks = {name: len(dims) for name, dims in inferred_dims(model).items()}
    count = 0
    for node in graph.node:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) > 1 and node.input[1]:
            if node.input[1] not in initializers:
                continue
            axes = [int(a) for a in initializers[node.input[1]].ravel()]
        else:
            axes = list(attrs.get("axes", []))
        if attrs.get("keepdims", 1) != 1 or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        del node.input[1:]
        count += 1
    return count


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes of `model` that should stay float in the int8 model, found by op type and graph pattern.

    Stays float:
    - `Resize` in linear or cubic mode: onnxruntime's CPU kernels do not fuse `DequantizeLinear -> Resize ->
      QuantizeLinear` for these modes, so the resize runs in float whatever the quantizer does, and a QDQ pair
      around it only adds a quantize and a dequantize pass; for the last upsampling of segmentation logits to
      the input size that pair alone costs about 40% of the Resize (1 x 21 x 512 x 512). Nearest-neighbour
      Resize is kept in int8 (it moves bytes).
    - `MatMul` by a bilinear interpolation matrix (`heads._layers.bilinear_as_matmuls`, the export's form of
      a bilinear resize: one operand computed from tensor shapes only, or a constant non-negative matrix whose
      rows or columns sum to 1): it replaces a float Resize, and 8-bit taps would move every output.
    - Pass-through ops (reshape, transpose, concat, ...) on the way to a graph output: the outputs stay float
      (logits, box offsets, depth), without one shared 8-bit scale across e.g. all default boxes' offsets.

    Stays int8 on purpose (measured): depthwise convolutions (int8 `QLinearConv` is not faster than
    onnxruntime's float NCHWc depthwise kernel, but a float island around one dequantizes and requantizes the
    expanded tensor, which costs more than it saves), the squeeze-excite branch (`GlobalAveragePool`, its two
    1x1 convolutions and the large `Mul`; only its HardSigmoid gate on a (N, C, 1, 1) tensor is float, since
    onnxruntime has no int8 HardSigmoid), SiLU (`QLinearSigmoid` + `QLinearMul`), Add and Concat.

    Args:
        model: The (pre-processed) float model.

    Returns:
        Node names, for `quantize_static(nodes_to_exclude=...)`.
    """
    keep: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Resize":
            mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"nearest")
            if (mode.decode() if isinstance(mode, bytes) else mode) != "nearest":
                keep.append(node.name)
    keep += interpolation_matmuls(model)
    keep += pass_through_feeders(model, [o.name for o in model.graph.output])
    return list(dict.fromkeys(keep))


def shape_derived_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the values of `model` computed without reading any graph input's values (only their shapes)."""
    initializers = {t.name for t in model.graph.initializer}
    data = {i.name for i in model.graph.input if i.name not in initializers}
    derived: set[str] = set()
    for node in model.graph.node:  # topological order
        reads_data = node.op_type not in ("Shape", "Size") and any(name in data for name in node.input)
        (data if reads_data else derived).update(node.output)
    return derived


def _is_interpolation_matrix(weights: np.ndarray) -> bool:
    """A 2-D non-negative matrix whose rows (or columns) sum to 1: linear-interpolation taps."""
    if weights.ndim != 2 or weights.size == 0 or (weights < 0).any():
        return False
    return any(np.allclose(weights.sum(axis=axis), 1.0, atol=1e-5) for axis in (0, 1))


def interpolation_matmul_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The `MatMul` nodes that multiply by an interpolation matrix (see `float_nodes`)."""
    initializers = {t.name: t for t in model.graph.initializer}
    derived = shape_derived_tensors(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        for name in node.input:
            if name in derived or (
                name in initializers and _is_interpolation_matrix(numpy_helper.to_array(initializers[name]))
            ):
                found.append(node)
                break
    return found


def interpolation_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of `interpolation_matmul_nodes(model)`."""
    return [node.name for node in interpolation_matmul_nodes(model)]


def pass_through_feeders(model: onnx.ModelProto, tensors: list[str], stop: set[str] | None = None) -> list[str]:
    """The pass-through nodes (reshapes, transposes, concats, ...) that carry values into `tensors`.

    Found walking back from `tensors` through `PASS_THROUGH_OPS`; the walk ends at any other op and at the
    node names in `stop`.

    Args:
        model: The float model.
        tensors: Names of the values to start from (graph outputs, inputs of the output part).
        stop: Node names never entered (already kept by the caller).

    Returns:
        Node names, nearest first.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    stack, seen, found = list(tensors), set(stop or ()), []
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen or node.op_type not in PASS_THROUGH_OPS:
            continue
        seen.add(node.name)
        found.append(node.name)
        stack.extend(node.input)
    return found


def shapes_before_dequantize(model: onnx.ModelProto) -> int:
    """Make (in place) each `Shape` of a dequantized tensor read the quantized tensor, and drop unread dequantizes.

    The quantizer gives every reader of a quantized tensor its `DequantizeLinear`, a `Shape` too (the shapes
    that size the decoders' upsamplings and the bilinear interpolation matrices): a full float pass over the
    tensor to read its shape, which the uint8 tensor before the dequantize has as well. Measured on the depth
    default at batch 8: 0.5-0.6 ms per such dequantize, at 112 x 112 x 64.

    Returns:
        How many `Shape` nodes now read a quantized tensor.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    moved = 0
    for node in graph.node:
        source = producer.get(node.input[0]) if node.op_type == "Shape" else None
        if source is not None and source.op_type == "DequantizeLinear":
            node.input[0] = source.input[0]
            moved += 1
    if moved:
        _drop_unread_dequantizes(graph)
    return moved


def _drop_unread_dequantizes(graph: onnx.GraphProto) -> None:
    """Remove (in place) the DequantizeLinear nodes whose output no node and no graph output reads."""
    read = {v for n in graph.node for v in n.input} | {o.name for o in graph.output}
    kept = [n for n in graph.node if n.op_type != "DequantizeLinear" or n.output[0] in read]
    del graph.node[:]
    graph.node.extend(kept)


def _scalar(name: str, initializers: dict[str, onnx.TensorProto], producer: dict[str, onnx.NodeProto]):
    """The float value of a scalar constant: an initializer, or a DequantizeLinear of initializers; else None."""
    if name in initializers:
        value = numpy_helper.to_array(initializers[name])
    else:
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or not all(i in initializers for i in node.input[:3]):
            return None
        q, scale, zero = (numpy_helper.to_array(initializers[i]) for i in node.input[:3])
        value = (q.astype(np.float64) - zero.astype(np.float64)) * scale
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def fold_scalar_multiplications(model: onnx.ModelProto) -> int:
    """Fold (in place) each multiplication by a positive scalar between two quantizations into the second one.

    `X -> QuantizeLinear(s_a) -> DequantizeLinear -> Mul(., c) -> QuantizeLinear(s_b, z_b)` becomes
    `X -> QuantizeLinear(s_b / c, z_b)`: the uint8 tensor `round(c * X / s_b) + z_b` the readers got before, with
    one rounding (at s_a) fewer, and no int8 op. Where it arises: hard-swish's `* 1/6` where not every reader is
    a convolution to fold it into (`rewrite_hard_swish`; the expanded tensor feeding a squeeze-excite): a
    `QLinearMul` over the full tensor, 1.1 ms of LR-ASPP MobileNetV3-L's 33 ms int8 run at 512 px (batch 1,
    profile); the rule asks for nothing else of the Mul, so any other such scaling folds the same way.

    Only where the first quantize / dequantize pair is read by the Mul alone, its other input is a positive scalar
    constant (float, or dequantized from initializers) and the second quantize has a scalar scale.

    Returns:
        How many multiplications were folded.
    """
    graph = model.graph
    producer, consumers = node_links(graph)
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    taken = all_names(model)

    def only_reader(tensor: str) -> onnx.NodeProto | None:
        readers = consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in outputs else None

    removed: set[int] = set()
    for mul in graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        for side in (0, 1):
            dequantize = producer.get(mul.input[side])
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producer.get(dequantize.input[0])
            c = _scalar(mul.input[1 - side], initializers, producer)
            requantize = only_reader(mul.output[0])
            if (
                quantize is None
                or quantize.op_type != "QuantizeLinear"
                or c is None
                or not c > 0
                or only_reader(quantize.output[0]) is not dequantize
                or only_reader(dequantize.output[0]) is not mul
                or requantize is None
                or requantize.op_type != "QuantizeLinear"
                or requantize.input[1] not in initializers
                or numpy_helper.to_array(initializers[requantize.input[1]]).size != 1
            ):
                continue
            s_b = numpy_helper.to_array(initializers[requantize.input[1]])
            scale = unique_name(f"{requantize.input[1]}_over_{mul.name or 'mul'}", taken)
            graph.initializer.append(numpy_helper.from_array((s_b / np.float32(c)).astype(np.float32), scale))
            requantize.input[0], requantize.input[1] = quantize.input[0], scale
            removed |= {id(quantize), id(dequantize), id(mul)}
            break
    if not removed:
        return 0
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unread_dequantizes(graph)  # the scalar's own (hard-swish's shared 1/6) once nothing reads it
    drop_unused_constants(model)
    return len(removed) // 3


class QuantizedGraphForms(NamedTuple):
    """What `quantized_graph_forms` changed."""

    shapes_moved: int
    scalings_folded: int
    resizes_as_gathers: int
    normalization_folded: bool


def quantized_graph_forms(
    model: onnx.ModelProto, *, gather_resize: bool = True, fold_normalization: bool = True
) -> QuantizedGraphForms:
    """Apply (in place) the rewrites of a QDQ graph, in order: PTQ's (`quantize_int8`) and the QAT export's.

    `shapes_before_dequantize`, `fold_scalar_multiplications`, then (optionally) the nearest Resizes as uint8
    Gathers (`resize_gathers.gather_nearest_resizes`) and the normalization folded into the stem input's
    QuantizeLinear (`input_quantization.fold_input_normalization`). Each gives the same function.
    """
    shapes = shapes_before_dequantize(model)
    scalings = fold_scalar_multiplications(model)
    gathers = gather_nearest_resizes(model) if gather_resize else 0
    folded = fold_input_normalization(model) if fold_normalization else False
    return QuantizedGraphForms(shapes, scalings, gathers, folded)


def qdq_wrapped_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes of a QDQ model between a DequantizeLinear and QuantizeLinear nodes.

    These are the nodes onnxruntime can fuse into int8 kernels (or runs in float between a dequantize and a
    quantize, for ops without an int8 kernel).

    Inputs that are initializers (a Conv's weight goes through its own DequantizeLinear; Clip bounds, Resize
    scales) or empty are ignored; a node counts as quantized when its first input is dequantized and every
    consumer of every output is a QuantizeLinear (or it has no float consumer, for a graph output quantized
    then dequantized).
    """
    producer, consumers = node_links(model.graph)
    out = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.input:
            continue
        first = producer.get(node.input[0])
        if first is None or first.op_type != "DequantizeLinear":
            continue
        users = [u for o in node.output for u in consumers.get(o, [])]
        if users and all(u.op_type == "QuantizeLinear" for u in users):
            out.add(node.name)
    return out


def _input_spec(model: onnx.ModelProto) -> list[tuple[str, np.dtype, tuple[int | str | None, ...]]]:
    initializers = {t.name for t in model.graph.initializer}
    spec = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        spec.append((value.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims))
    return spec


class _CalibrationFeed:
    """Checks each calibration batch against the model's inputs and hands it to onnxruntime's calibrator."""

    def __init__(self, batches: Iterable, spec: list, source: str) -> None:
        self.spec = spec
        self.source = source
        self.count = 0
        self._it: Iterator = iter(batches)
        self._first = next(self._it, None)
        if self._first is None:
            names = ", ".join(f"'{n}' {d} {list(s)}" for n, d, s in spec)
            raise ValueError(f"the calibration set for {source} is empty: give at least one batch for {names}")
        self._check(self._first)  # fail before the (slow) calibration starts

    def _check(self, batch) -> dict[str, np.ndarray]:
        if not isinstance(batch, Mapping):
            if len(self.spec) != 1:
                raise TypeError(
                    f"{self.source} has inputs {[n for n, _, _ in self.spec]}: give each calibration batch as a "
                    f"dict input name -> array"
                )
            batch = {self.spec[0][0]: batch}
        feed = {}
        for name, dtype, dims in self.spec:
            if name not in batch:
                raise ValueError(f"calibration batch {self.count} has no input '{name}' of {self.source}")
            array = batch[name]
            if not isinstance(array, np.ndarray):
                raise TypeError(
                    f"calibration batch {self.count} for '{name}' of {self.source} is a {type(array).__name__}; "
                    f"give a numpy array"
                )
            fixed_ok = len(dims) == array.ndim and all(
                not isinstance(d, int) or d == 0 or d == s for d, s in zip(dims, array.shape)
            )
            if not fixed_ok:
                raise ValueError(
                    f"calibration batch {self.count} for '{name}' of {self.source} has shape {list(array.shape)}, "
                    f"the model expects {[d if isinstance(d, int) and d else (d or '?') for d in dims]}"
                )
            if array.dtype != dtype:
                raise ValueError(
                    f"calibration batch {self.count} for '{name}' of {self.source} has dtype {array.dtype}, "
                    f"the model expects {dtype}"
                )
            feed[name] = array
        return feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as {input name: array}, or None at the end (onnxruntime's reader protocol)."""
        if self._first is not None:
            batch, self._first = self._first, None
        else:
            batch = next(self._it, None)
            if batch is None:
                return None
        feed = self._check(batch)
        self.count += 1
        return feed

    def rewind(self) -> None:
        """Onnxruntime calls this for some calibration methods; one pass is all MinMax needs."""


def quantize_int8(
    model_path: str | Path,
    output_path: str | Path,
    batches: Iterable[np.ndarray] | Iterable[Mapping[str, np.ndarray]],
    *,
    per_channel: bool = True,
    nodes_to_exclude: Sequence[str] = (),
    rewrite_activations: bool = True,
    pad_channels: bool = True,
    fold_normalization: bool = True,
    gather_resize: bool = True,
    calibration_method: str = "minmax",
    calibration_percentile: float = 99.999,
) -> QuantizationReport:
    """Quantize an ONNX model to int8 (static, QDQ), calibrated on `batches`, and write it atomically.

    Args:
        model_path: The float ONNX model.
        output_path: Where the int8 model goes; written through a temporary file beside it, so a failure
            (bad calibration data, an unwritable folder, an interrupt) leaves no file there.
        batches: Calibration inputs, already preprocessed as the model expects them (e.g. normalized float32
            (N, 3, H, W) images from the task's training set): numpy arrays for a single-input model, else
            dicts input name -> array. A few batches (8-32 images) are enough for MinMax calibration.
        per_channel: One weight scale per output channel (keeps depthwise convolutions accurate).
        nodes_to_exclude: More node names to keep float, on top of `float_nodes`'s.
        rewrite_activations: Rewrite hard-swish and spatial means into int8-fusable ops (`rewrite_hard_swish`,
            `rewrite_spatial_mean`).
        pad_channels: Add zero channels where onnxruntime's fast int8 convolution kernels need them (depthwise
            channels to a multiple of 16, the RGB stem's input to 4: `channel_padding`). The same function;
            the quantized model is faster.
        fold_normalization: Fold the uint8 image's normalization into the QuantizeLinear that feeds the stem
            (`input_quantization.fold_input_normalization`): the same uint8 stem input, fewer float passes.
        gather_resize: Run the int8 graph's nearest-neighbour Resizes as two uint8 Gathers in channels-last
            order (`resize_gathers.gather_nearest_resizes`): the same values; onnxruntime's uint8 Resize takes a
            slow generic path in the graph's NHWC layout.
        calibration_method: "minmax" (the default): each activation's range is the extremes seen; "percentile":
            ranges from histograms of the network part (`calibration.percentile_overrides`).
        calibration_percentile: With "percentile": the percentile of each activation's magnitudes that bounds
            its range.

    Returns:
        What was written.

    Raises:
        FileNotFoundError: `model_path` does not exist.
        ValueError: The calibration set is empty, or a batch has the wrong shape, dtype or input names; an
            unknown calibration method.
        TypeError: A batch is not a numpy array (or dict of them).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tasks.common.deploy.calibration import Replay, check_calibration_method, percentile_overrides

    check_calibration_method(calibration_method, calibration_percentile)
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"no ONNX model at {model_path}")
    model = onnx.load(str(model_path))
    feed = _CalibrationFeed(batches, _input_spec(model), str(model_path))

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return feed.get_next()

    rewritten = rewrite_hard_swish(model) if rewrite_activations else 0
    if rewrite_activations:
        rewrite_spatial_mean(model)
    widened, channel_pads = 0, []
    if pad_channels:
        from tasks.common.deploy.channel_padding import pad_depthwise_channels, pad_input_channels

        widened, channel_pads = pad_depthwise_channels(model), pad_input_channels(model)
    with tempfile.TemporaryDirectory(prefix="litedense_int8_") as tmp_dir:
        pre_path = Path(tmp_dir) / "preprocessed.onnx"
        # onnxruntime's symbolic shape inference writes scratch files into the working directory and leaves
        # them there when it fails: run it inside the temporary folder.
        cwd = os.getcwd()
        os.chdir(tmp_dir)
        try:
            try:
                quant_pre_process(model, str(pre_path))
            except Exception:  # noqa: BLE001 -- onnxruntime raises a bare Exception when symbolic inference stops
                # It gives up on some shape arithmetic (e.g. a decoder's computed upsampling sizes); ONNX's own
                # shape inference + the graph optimization are what quantization needs.
                quant_pre_process(model, str(pre_path), skip_symbolic_shape=True)
        finally:
            os.chdir(cwd)
        preprocessed = onnx.load(str(pre_path))
        excluded = [*float_nodes(preprocessed), *channel_pads, *nodes_to_exclude]
        extra_options = {"WeightSymmetric": True, "ActivationSymmetric": False}
        reader = Reader()
        if calibration_method == "percentile":
            # Two calibrations read the batches (the percentiles on the network part, then quantize_static's own
            # MinMax, whose ranges the overrides replace), so they are held in memory once checked.
            reader = Replay(list(iter(feed.get_next, None)))
            extra_options["TensorQuantOverrides"] = percentile_overrides(
                preprocessed, excluded, reader.feeds, percentile=calibration_percentile
            )
        with atomic_path(output_path) as tmp_out:
            quantize_static(
                str(pre_path),
                str(tmp_out),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                reduce_range=False,
                nodes_to_exclude=excluded,
                extra_options=extra_options,
            )
            quantized = onnx.load(str(tmp_out))
            forms = quantized_graph_forms(quantized, gather_resize=gather_resize, fold_normalization=fold_normalization)
            if any(forms):
                onnx.save(quantized, str(tmp_out))
            onnx.checker.check_model(str(tmp_out))
    return QuantizationReport(
        path=Path(output_path),
        float_nodes=tuple(excluded),
        hard_swish_rewritten=rewritten,
        calibration_batches=feed.count,
        calibration_method=(
            f"percentile {calibration_percentile:g}" if calibration_method == "percentile" else calibration_method
        ),
        depthwise_widened=widened,
        inputs_widened=len(channel_pads),
        normalization_folded=forms.normalization_folded,
        resizes_as_gathers=forms.resizes_as_gathers,
        scalings_folded=forms.scalings_folded,
    )
