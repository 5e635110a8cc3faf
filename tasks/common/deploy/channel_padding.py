"""Zero channels added to a float ONNX model so that onnxruntime's fast int8 convolution kernels apply.

onnxruntime 1.32 runs a uint8 `QLinearConv` through MLAS's symmetric "indirect" kernels (AVX512-VNNI here) only
when the shapes fit them (`MlasConvSymPackWSize`): a depthwise convolution needs a channel count that is a
multiple of 16, any other convolution input channels that are a multiple of 4. Otherwise it takes a generic
path, slower than the float kernel it replaces. MobileNetV3's expanded widths 72, 120, 200 and 184 (and
MobileNetV3-small's 88) miss the first rule, every network's RGB stem (3 channels) the second. Measured in
isolation (2 threads, 1 x 24 x 80 x 80 in, 1x1 -> 3x3 depthwise -> 1x1): int8 with 72 channels 0.86 ms, with 80
channels 0.59 ms; 120 channels 1.17 ms, 128 channels 0.72 ms; the stem 3 -> 32 at 512 px 6.0 ms, with a fourth
(zero) input channel 3.9 ms (float: 3.0 ms).

Both rewrites give the same function: the added channels have zero weights wherever they are read, so what
they carry never reaches an output (and is zero where it is made, so the calibrated ranges do not change).
They are applied to the float model before quantization (`quantize_int8`); the fp32 export is left as is.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tasks.common.deploy.onnx_graph import all_names, attribute, constant_value, inferred_dims, unique_name

# onnxruntime's symmetric int8 kernels (MLAS convsym.cpp on x86-64): depthwise group alignment, and the input
# channel alignment of the other convolutions.
DEPTHWISE_CHANNEL_MULTIPLE = 16
INPUT_CHANNEL_MULTIPLE = 4

# Ops that act on each channel alone: a channel region passes through them unchanged. (Reductions and pools
# keep channel 1 only if they reduce other axes: the region's channel-count check on every tensor sees to it.)
CHANNELWISE_UNARY_OPS = frozenset(
    {
        "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu", "Tanh", "Identity",
        "GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean", "ReduceMax",
    }
)  # fmt: skip
CHANNELWISE_BINARY_OPS = frozenset({"Add", "Mul", "Sub"})


@dataclass
class _Region:
    """Tensors that all carry the same C channels on axis 1, and the convolutions around them."""

    channels: int
    tensors: set[str] = field(default_factory=set)
    # Convolutions by id() (node names may be empty): those that write the region's channels, those that read
    # them, and the depthwise ones inside it.
    writers: set[int] = field(default_factory=set)
    readers: set[int] = field(default_factory=set)
    depthwise: set[int] = field(default_factory=set)


class _Graph:
    """Lookups over one graph: producers, consumers, initializers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.model = model
        self.nodes = {id(node): node for node in graph.node}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}

    @cached_property
    def channels(self) -> dict[str, int | None]:
        """Tensor -> its size on axis 1, from shape inference (run once, and only by the depthwise padding)."""
        return {name: dims[1] for name, dims in inferred_dims(self.model).items() if len(dims) >= 2}

    def constant(self, name: str) -> str | None:
        """The initializer that value `name` is, directly or through `Identity` nodes; None if not constant.

        The exporter stores equal constants once and gives each other reader an `Identity` of it (e.g. the
        equal biases of several convolutions).
        """
        while name not in self.initializers:
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return name

    def weight(self, conv: onnx.NodeProto) -> np.ndarray | None:
        """The conv's weight, if it and its bias are constants (so they can be changed)."""
        if len(conv.input) < 2 or self.constant(conv.input[1]) is None:
            return None
        if len(conv.input) > 2 and conv.input[2] and self.constant(conv.input[2]) is None:
            return None
        return numpy_helper.to_array(self.initializers[self.constant(conv.input[1])])

    def private_initializer(self, node: onnx.NodeProto, index: int, taken: set[str]) -> str:
        """The initializer behind input `index` of `node`, first copied under a new name unless only it reads it.

        Padding one reader's constant must not change the other readers of a shared one.
        """
        name = node.input[index]
        source = self.constant(name)
        if name != source or len(self.consumers[name]) > 1:
            copy = onnx.TensorProto()
            copy.CopyFrom(self.initializers[source])
            copy.name = unique_name(f"{node.name}_{'weight' if index == 1 else 'bias'}", taken)
            self.model.graph.initializer.append(copy)
            self.initializers[copy.name] = self.model.graph.initializer[-1]
            self.consumers[name].remove(node)
            self.consumers[copy.name].append(node)
            node.input[index] = copy.name
        return node.input[index]

    def is_depthwise(self, conv: onnx.NodeProto) -> bool:
        weight = self.weight(conv)
        group = attribute(conv, "group", 1)
        return weight is not None and weight.ndim == 4 and group > 1 and weight.shape[:2] == (group, 1)

    def is_scalar_constant(self, name: str) -> bool:
        return name in self.initializers and int(np.prod(self.initializers[name].dims)) == 1


def _grow_region(graph: _Graph, start: onnx.NodeProto, channels: int) -> _Region | None:
    """The channel region around depthwise convolution `start`, or None if anything in it mixes channels.

    Walks from the depthwise convolution's input and output through channelwise ops (activations, pooling to
    (N, C, 1, 1), products and sums of two region tensors or with a scalar constant) until it reaches ordinary
    convolutions, which write or read the region's channels. Anything else that touches a region tensor (a
    concat, a reshape, a resize, a graph output, a constant per-channel operand) ends the attempt: those
    would see the added channels.
    """
    region = _Region(channels, depthwise={id(start)})
    pending = [start.input[0], start.output[0]]
    while pending:
        tensor = pending.pop()
        if tensor in region.tensors:
            continue
        if tensor in graph.outputs or tensor in graph.inputs or tensor in graph.initializers:
            return None
        if graph.channels.get(tensor) != channels:
            return None  # e.g. a broadcast (N, 1, H, W) operand, or a shape inference did not find
        region.tensors.add(tensor)
        writer = graph.producer.get(tensor)
        if writer is None:
            return None
        nodes = [(writer, "writes")] + [(reader, "reads") for reader in graph.consumers[tensor]]
        for node, role in nodes:
            if node.op_type == "Conv":
                if graph.is_depthwise(node):
                    if attribute(node, "group", 1) != channels:
                        return None
                    region.depthwise.add(id(node))
                    pending += [node.input[0], node.output[0]]
                elif graph.weight(node) is None or attribute(node, "group", 1) != 1:
                    return None
                elif role == "writes":
                    region.writers.add(id(node))
                elif node.input[0] == tensor:
                    region.readers.add(id(node))
                else:
                    return None  # the tensor is a weight or bias of that conv
            elif node.op_type in CHANNELWISE_UNARY_OPS:
                if node.input[0] != tensor and role == "reads":
                    return None  # e.g. a Clip bound: not a channel tensor
                pending += [node.input[0], node.output[0]]
            elif node.op_type in CHANNELWISE_BINARY_OPS:
                for operand in node.input:
                    if not graph.is_scalar_constant(operand):
                        pending.append(operand)
                pending.append(node.output[0])
            else:
                return None
    return region


def _pad_axis(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return np.pad(array, widths)


def _replace_initializer(graph: _Graph, name: str, array: np.ndarray) -> None:
    graph.initializers[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32, copy=False), name))


def _apply(graph: _Graph, region: _Region, channels: int, taken: set[str]) -> None:
    for key in region.writers | region.depthwise:
        node = graph.nodes[key]
        weight = graph.weight(node)
        _replace_initializer(graph, graph.private_initializer(node, 1, taken), _pad_axis(weight, 0, channels))
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(graph.initializers[graph.constant(node.input[2])])
            _replace_initializer(graph, graph.private_initializer(node, 2, taken), _pad_axis(bias, 0, channels))
    for key in region.depthwise:
        node = graph.nodes[key]
        for field_ in node.attribute:
            if field_.name == "group":
                field_.i = channels
    for key in region.readers:
        node = graph.nodes[key]
        weight = graph.weight(node)
        _replace_initializer(graph, graph.private_initializer(node, 1, taken), _pad_axis(weight, 1, channels))


def _drop_shapes(model: onnx.ModelProto, tensors: set[str]) -> None:
    """Forget the recorded shapes of `tensors` (their channel count changed); shape inference recomputes them."""
    kept = [v for v in model.graph.value_info if v.name not in tensors]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def pad_depthwise_channels(model: onnx.ModelProto, multiple: int = DEPTHWISE_CHANNEL_MULTIPLE) -> int:
    """Widen (in place) every depthwise convolution whose channel count is not a multiple of `multiple`.

    The convolution, the ones that write its input's channels (the block's expansion), the ones that read its
    output's channels (the projection, a squeeze-excite's reduction) and everything channelwise between them
    get zero channels up to the next multiple. Regions that reach anything that mixes or moves channels
    (concat, reshape, resize, a graph output) are left as they are.

    Args:
        model: A float ONNX model with initializer weights.
        multiple: The channel alignment to reach.

    Returns:
        How many depthwise convolutions were widened.
    """
    graph = _Graph(model)
    taken = all_names(model)
    widened = 0
    done: set[int] = set()
    for node in list(model.graph.node):
        if node.op_type != "Conv" or id(node) in done or not graph.is_depthwise(node):
            continue
        channels = attribute(node, "group", 1)
        if channels % multiple == 0:
            continue
        region = _grow_region(graph, node, channels)
        if region is None:
            done.add(id(node))
            continue
        done |= region.depthwise
        _apply(graph, region, -(-channels // multiple) * multiple, taken)
        _drop_shapes(model, region.tensors)
        widened += len(region.depthwise)
    return widened


# What may stand between a graph input and the stem: the cast and the normalization by constants.
_PREPROCESSING_OPS = frozenset({"Cast", "Add", "Sub", "Mul", "Div", "Identity"})


def _reads_graph_input(graph: _Graph, tensor: str) -> bool:
    """Whether `tensor` is a graph input, or made from one by preprocessing ops with constant operands."""
    while tensor not in graph.inputs:
        node = graph.producer.get(tensor)
        if node is None or node.op_type not in _PREPROCESSING_OPS:
            return False
        if any(constant_value(name, graph.initializers, graph.producer) is None for name in node.input[1:]):
            return False
        tensor = node.input[0]
    return True


def pad_input_channels(model: onnx.ModelProto, multiple: int = INPUT_CHANNEL_MULTIPLE) -> list[str]:
    """Give (in place) each ordinary convolution with too few input channels zero input channels.

    Meant for the RGB stem: its 3-channel input becomes 4 channels (a `Pad` of the float input, before it is
    quantized) and its weight a zero fourth input channel, which onnxruntime's symmetric int8 kernel accepts.
    Only convolutions with fewer than `multiple` input channels that read a graph input (through elementwise
    preprocessing: cast, normalization) are changed: inside the network a Pad would sit between quantized
    tensors and cost a dequantize and a quantize, and wider misaligned convolutions would need the region
    analysis of `pad_depthwise_channels` on their input's writer.

    Args:
        model: A float ONNX model (opset >= 11, `Pad` with its pads as an input).
        multiple: The input channel alignment to reach.

    Returns:
        The names of the `Pad` nodes added, one per convolution given zero input channels. They should stay
        float (`quantize_static(nodes_to_exclude=...)`): onnxruntime runs a QDQ Pad in float anyway, and the
        dequantize + quantize around it would be two more passes over the image.
    """
    graph = _Graph(model)
    taken = all_names(model)
    added: list[str] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        weight = graph.weight(node) if node.op_type == "Conv" else None
        if (
            weight is None
            or weight.ndim != 4
            or attribute(node, "group", 1) != 1
            or weight.shape[1] >= multiple
            or not _reads_graph_input(graph, node.input[0])
        ):
            new_nodes.append(node)
            continue
        pads_name = unique_name(f"{node.name}_channel_pads", taken)
        padded_name = unique_name(f"{node.name}_input{multiple}", taken)
        pads = np.zeros(8, dtype=np.int64)
        pads[5] = multiple - weight.shape[1]  # end of axis 1 (ONNX pads: all begins, then all ends)
        # A Constant node, not an initializer: onnxruntime's `quant_pre_process` stores initializers as external
        # data for its graph optimizer, whose Pad shape inference cannot read external data.
        new_nodes += [
            helper.make_node(
                "Constant", [], [pads_name], name=unique_name(f"{node.name}_channel_pads", taken),
                value=numpy_helper.from_array(pads, pads_name),
            ),
            helper.make_node(
                "Pad", [node.input[0], pads_name], [padded_name], name=unique_name(f"{node.name}_channel_pad", taken)
            ),
        ]  # fmt: skip
        added.append(new_nodes[-1].name)
        _replace_initializer(graph, graph.private_initializer(node, 1, taken), _pad_axis(weight, 1, multiple))
        node.input[0] = padded_name
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return added
