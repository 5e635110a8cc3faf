"""Activation ranges for int8 by histogram calibration (percentile, entropy), on the network part of a graph.

`quantize_int8` calibrates with onnxruntime's MinMax by default: each activation's range is the extremes seen
on the calibration batches, so one outlier pixel stretches the 8-bit grid of a whole tensor. The histogram
methods clip such outliers: "percentile" bounds each tensor's range by T, the `percentile`-th percentile of its
absolute values (the range is (max(-T, min), min(T, max)): a ReLU6 output's is (0, T)), onnxruntime's
PercentileCalibrater with its symmetric histograms; "entropy" picks the range whose 8-bit histogram is closest
to the float one (KL divergence, TensorRT's method).

Why not just `quantize_static(calibrate_method=...)`: onnxruntime calibrates every float tensor of the graph,
and its histogram calibrators stack each tensor's batches into one array, which fails ("inhomogeneous shape")
on the tensors of detection's NMS part, whose sizes change from batch to batch. That part stays float anyway
(`quantize.float_nodes`), so the histograms are collected on the graph cut where the float output part begins
(`network_part`), with onnxruntime's own calibrator (`create_calibrator`), and the ranges go to
`quantize_static` as `TensorQuantOverrides` (rmin / rmax per tensor) (`histogram_overrides`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxruntime.quantization import CalibrationDataReader
from tqdm.auto import tqdm

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")

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
    producer = {output: node for node in graph.node for output in node.output}
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
    part = copy.deepcopy(model)
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


def histogram_overrides(
    model: onnx.ModelProto,
    float_nodes: Iterable[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    method: str,
    percentile: float,
    work_dir: str | Path,
) -> dict[str, list[dict[str, np.float32]]]:
    """Histogram-calibrated ranges of the network part, as `quantize_static`'s `TensorQuantOverrides`.

    Args:
        model: The float model `quantize_static` will quantize (after `quant_pre_process`).
        float_nodes: The nodes it keeps float (`nodes_to_exclude`).
        feeds: The calibration batches, {input name: array}.
        method: "percentile" or "entropy".
        percentile: For "percentile": the share of each tensor's values kept inside its range, in %.
        work_dir: Folder for the cut and onnxruntime's augmented model (a temporary one).

    Returns:
        {tensor name: [{"rmin": ..., "rmax": ...}]} for each calibrated tensor produced by an op that takes a
        range of its own (not `_SAME_RANGE_AS_INPUT`); ranges include 0, as onnxruntime's own do.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    work_dir = Path(work_dir)
    part_path = work_dir / "network_part.onnx"
    onnx.save(network_part(model, float_nodes), str(part_path))
    options = {"num_bins": 2048}
    if method == "percentile":
        # symmetric: histograms of |x| (a one-sided percentile of magnitudes, then clamped to the extremes seen)
        options.update(percentile=float(percentile), symmetric=True)
    calibrator = create_calibrator(
        str(part_path),
        [],
        augmented_model_path=str(work_dir / "network_part_augmented.onnx"),
        calibrate_method=CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.Entropy,
        extra_options=options,
    )
    # One batch per call: onnxruntime holds every intermediate output of a call in memory until it has made the
    # histograms (all batches of a 512 px segmentation net would be gigabytes); the histograms merge across calls.
    # (onnxruntime prints a line per call and per tensor set; the progress bar says what runs instead)
    with contextlib.redirect_stdout(io.StringIO()):
        for feed in tqdm(feeds, desc=f"{method} calibration", unit="batch", leave=False, file=sys.stderr):
            calibrator.collect_data(Replay([feed]))
        ranges = calibrator.compute_data()
    op_of = {output: node.op_type for node in model.graph.node for output in node.output}
    overrides = {}
    for name, tensor_range in ranges.data.items():
        if op_of.get(name) in _SAME_RANGE_AS_INPUT:
            continue
        low, high = (float(v) for v in tensor_range.range_value)
        overrides[name] = [{"rmin": np.float32(min(low, 0.0)), "rmax": np.float32(max(high, 0.0))}]
    return overrides
