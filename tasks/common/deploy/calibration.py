"""Percentile calibration of int8 activation ranges, on the network part of a graph.

`quantize_int8` calibrates with onnxruntime's MinMax by default: each activation's range is the extremes seen
on the calibration batches, so one outlier pixel stretches the 8-bit grid of a whole tensor. "percentile"
clips such outliers: each tensor's range is bounded by T, the `percentile`-th percentile of its magnitudes
(the range is (max(-T, min), min(T, max)), so a ReLU6 output's is (0, T)): the method of onnxruntime's
`PercentileCalibrater` with symmetric histograms.

Why not `quantize_static(calibrate_method=Percentile)`: onnxruntime calibrates every float tensor of the graph,
and its histogram calibrators stack each tensor's batches into one array, which fails ("inhomogeneous shape")
on the tensors of detection's NMS part, whose sizes change from batch to batch; they also fail on nearly
constant tensors (`percentile_overrides`). The output part stays float anyway (`quantize.float_nodes`), so the
histograms are made on the graph cut where the float output part begins (`network_part`), and the ranges go to
`quantize_static` as `TensorQuantOverrides` (rmin / rmax per tensor). onnxruntime's entropy calibrator (KL
divergence) was measured too and is not offered: it lost 6 points of VOC mAP@0.5 on the BCCD detector
(docs/deploy.md, "Calibration").
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxruntime.quantization import CalibrationDataReader
from tqdm.auto import tqdm

from tasks.common.deploy.onnx_graph import node_links

CALIBRATION_METHODS = ("minmax", "percentile")

# Ops whose output onnxruntime's QDQ quantizer gives its input's quantization (`registry.QDQRegistry`: the
# Direct8Bit ops, Resize, MaxPool, Pad, Split, Gather, Where) or that only move data. Their outputs get no
# override: a range of their own there would add a requantization (and, for Resize, undo `resize_gathers`).
_SAME_RANGE_AS_INPUT = frozenset(
    {
        "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Resize", "MaxPool", "AveragePool", "Slice",
        "Pad", "Split", "Gather", "GatherElements", "Where", "TopK", "Identity", "Concat",
    }
)  # fmt: skip


def check_calibration_method(method: str, percentile: float) -> None:
    """Refuse an unknown method or a percentile outside (50, 100].

    Raises:
        ValueError: Naming the bad option and what is accepted.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"--calibration_method must be one of {list(CALIBRATION_METHODS)}, got {method!r}")
    if not 50.0 < float(percentile) <= 100.0:  # refused whatever the method: a bad value is a mistake either way
        raise ValueError(f"--calibration_percentile must be in (50, 100], got {percentile}")


def network_part(model: onnx.ModelProto, float_nodes: Iterable[str]) -> onnx.ModelProto:
    """The graph up to where its float output part begins, with the tensors at that cut as outputs.

    Kept: every node not in `float_nodes`, and every node those read from (e.g. the float preprocessing before
    the stem). Dropped: the float nodes downstream of the quantized ones (softmax, decode, NMS, argmax). The
    outputs are the float tensors the dropped nodes (or the graph's outputs) read from the kept ones.

    Args:
        model: The float model (after `quant_pre_process`, so intermediate tensors have types).
        float_nodes: Names of the nodes that stay float.

    Returns:
        A new model; `model` is not changed.
    """
    graph = model.graph
    floating = set(float_nodes)
    producer, _ = node_links(graph)
    kept: set[int] = set()
    stack = [node for node in graph.node if node.name not in floating]
    while stack:
        node = stack.pop()
        if id(node) in kept:
            continue
        kept.add(id(node))
        stack.extend(producer[name] for name in node.input if name in producer)
    kept_nodes = [node for node in graph.node if id(node) in kept]
    produced = {output for node in kept_nodes for output in node.output}
    cut = [name for node in graph.node if id(node) not in kept for name in node.input if name in produced]
    cut += [value.name for value in graph.output if value.name in produced]
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    outputs = [name for name in dict.fromkeys(cut) if types.get(name) == TensorProto.FLOAT]
    part = copy.deepcopy(inferred)  # with the inferred types, which `_range_tensors` reads
    del part.graph.node[:]
    part.graph.node.extend(copy.deepcopy(kept_nodes))
    del part.graph.output[:]
    part.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs)
    return part


class Replay(CalibrationDataReader):
    """An onnxruntime calibration reader over feeds held in memory; each calibration reads them from the start.

    Args:
        feeds: The batches, {input name: array}.
    """

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.feeds, self.index = list(feeds), 0

    def get_next(self) -> Mapping[str, np.ndarray] | None:
        """The next batch, or None after the last (then the next call starts over)."""
        if self.index >= len(self.feeds):
            self.index = 0
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        """Back to the first batch."""
        self.index = 0


def _range_tensors(part: onnx.ModelProto) -> list[str]:
    """The float tensors of the network part that take a range of their own (see `_SAME_RANGE_AS_INPUT`)."""
    float_values = {
        value.name
        for value in (*part.graph.value_info, *part.graph.output)
        if value.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    names = [
        output
        for node in part.graph.node
        if node.op_type not in _SAME_RANGE_AS_INPUT
        for output in node.output
        if output in float_values
    ]
    return list(dict.fromkeys(names))


def percentile_overrides(
    model: onnx.ModelProto,
    float_nodes: Iterable[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    percentile: float,
    bins: int = 2048,
) -> dict[str, list[dict[str, np.float32]]]:
    """Percentile-calibrated ranges of the network part, as `quantize_static`'s `TensorQuantOverrides`.

    The method of onnxruntime's `PercentileCalibrater` (symmetric: histograms of |x|, `bins` bins over
    [0, max |x|]), computed here in two passes over the batches: onnxruntime's collector also fails on nearly
    constant tensors (np.histogram's "Too many bins for data range" when a tensor spans a few float steps, e.g.
    a squeeze-excite sigmoid at 0.5 +- 5e-5 in a fresh EfficientNet), and holds every batch's tensors at once.

    Args:
        model: The float model `quantize_static` will quantize (after `quant_pre_process`).
        float_nodes: The nodes it keeps float (`nodes_to_exclude`).
        feeds: The calibration batches, {input name: array}.
        percentile: T, each tensor's bound, is the `percentile`-th percentile of its magnitudes (to a bin).
        bins: Histogram bins per tensor.

    Returns:
        {tensor name: [{"rmin": ..., "rmax": ...}]}: (min(0, max(-T, min)), max(0, min(T, max))) for each tensor
        produced by an op that takes a range of its own; tensors that are 0 everywhere get none (MinMax's).
    """
    import onnxruntime as ort

    part = network_part(model, float_nodes)
    names = _range_tensors(part)
    outputs = {value.name for value in part.graph.output}
    part.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names if name not in outputs
    )
    session = ort.InferenceSession(part.SerializeToString(), providers=["CPUExecutionProvider"])
    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    progress = {"unit": "batch", "leave": False, "file": sys.stderr}
    for feed in tqdm(feeds, desc="percentile calibration (1/2: extremes)", **progress):
        for name, value in zip(names, session.run(names, dict(feed))):
            if value.size:
                low[name], high[name] = min(low[name], float(value.min())), max(high[name], float(value.max()))
    # 1e-30: far below any activation's step; a tensor that small is 0 to 8 bits, and its bins would underflow
    bound = {name: max(abs(low[name]), abs(high[name])) for name in names if np.isfinite(low[name])}
    bound = {name: b for name, b in bound.items() if b > 1e-30}
    counts = {name: np.zeros(bins, dtype=np.int64) for name in bound}
    for feed in tqdm(feeds, desc="percentile calibration (2/2: histograms)", **progress):
        for name, value in zip(names, session.run(names, dict(feed))):
            if name in counts:
                counts[name] += np.histogram(np.abs(value), bins=bins, range=(0.0, bound[name]))[0]
    overrides = {}
    for name, count in counts.items():
        cdf = np.cumsum(count) / max(int(count.sum()), 1)
        # the upper edge of the bin where the cumulative share reaches the percentile: T covers it
        index = min(int(np.searchsorted(cdf, percentile / 100.0)), bins - 1)
        magnitude = bound[name] * (index + 1) / bins
        rmin, rmax = min(0.0, max(-magnitude, low[name])), max(0.0, min(magnitude, high[name]))
        overrides[name] = [{"rmin": np.float32(rmin), "rmax": np.float32(rmax)}]
    return overrides
