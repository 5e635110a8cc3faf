"""Percentile calibration of int8 activations (tasks.common.deploy.calibration), against numpy's percentiles.

The graph of these tests has what breaks onnxruntime's own histogram calibration: a float output part whose
tensor sizes change from batch to batch (`NonZero`, as detection's NMS part).
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402
from onnx import helper as h  # noqa: E402

from tasks.common.deploy.calibration import Replay, check_calibration_method, network_part  # noqa: E402
from tasks.common.deploy.quantize import quantize_int8  # noqa: E402

FLOAT_PART = ["normalize", "above", "where_above"]


def _graph(path) -> None:
    """x -> Div (float "preprocessing") -> 1x1 Conv (x2) -> y, with a float NonZero on y > 1 as a second output."""
    f = TensorProto.FLOAT
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(2.0 * np.eye(4, dtype=np.float32)[..., None, None], "w"),
    ]
    nodes = [
        h.make_node("Div", ["x", "one"], ["xn"], name="normalize"),
        h.make_node("Conv", ["xn", "w"], ["y"], name="conv"),
        h.make_node("Greater", ["y", "one"], ["mask"], name="above"),
        h.make_node("NonZero", ["mask"], ["where"], name="where_above"),
    ]
    outputs = [
        h.make_tensor_value_info("y", f, ["n", 4, 16, 16]),
        h.make_tensor_value_info("where", TensorProto.INT64, None),
    ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", f, ["n", 4, 16, 16])], outputs, inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))


def _feeds(count: int = 6, seed: int = 0) -> list[np.ndarray]:
    """Gaussian activations with a handful of huge outliers (what stretches a MinMax range)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.normal(0.0, 1.0, (2, 4, 16, 16)).astype(np.float32)
        x.flat[rng.choice(x.size, 2, replace=False)] = 50.0  # 12 of the 12288 values, 0.1%
        out.append(x)
    return out


def _conv_output_scale(path) -> float:
    """The scale of the QuantizeLinear that quantizes the conv's output."""
    model = onnx.load(str(path))
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0])
    return float(consts[node.input[1]])


def test_network_part_cuts_where_the_float_outputs_part_begins(tmp_path):
    _graph(tmp_path / "g.onnx")
    part = network_part(onnx.load(str(tmp_path / "g.onnx")), FLOAT_PART)
    # The float preprocessing feeds the quantized conv: kept; the NonZero part is downstream: dropped.
    assert [n.name for n in part.graph.node] == ["normalize", "conv"]
    assert [o.name for o in part.graph.output] == ["y"]
    feeds = _feeds(1)
    got = ort.InferenceSession(part.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": feeds[0]})
    np.testing.assert_allclose(got[0], 2.0 * feeds[0], rtol=1e-6)


@pytest.mark.parametrize("percentile", [99.8, 99.9])
def test_percentile_range_is_numpys_percentile_of_magnitudes_and_ignores_outliers(percentile, tmp_path):
    _graph(tmp_path / "g.onnx")
    feeds = _feeds()
    out = tmp_path / "int8.onnx"
    report = quantize_int8(
        tmp_path / "g.onnx", out, iter(feeds), nodes_to_exclude=FLOAT_PART, calibration_method="percentile",
        calibration_percentile=percentile, pad_channels=False,
    )  # fmt: skip
    assert report.calibration_method == f"percentile {percentile:g}" and report.calibration_batches == len(feeds)
    values = 2.0 * np.concatenate([x.ravel() for x in feeds])  # the conv's output y
    # T = the percentile of |y| (the outliers, 0.1% of the values, lie above it), the range (max(-T, min), T)
    magnitude = np.percentile(np.abs(values), percentile)
    low, high = max(-magnitude, values.min()), magnitude
    # onnxruntime's histogram of |y| has 2048 bins over (0, max|y|) = (0, 100): T is exact to a bin
    bin_width = 100.0 / 2048
    assert _conv_output_scale(out) == pytest.approx((high - low) / 255, abs=2 * bin_width / 255)
    # MinMax stretches the grid over the outliers: (100 - min) / 255, about 7x coarser
    minmax = tmp_path / "minmax.onnx"
    quantize_int8(
        tmp_path / "g.onnx", minmax, iter(feeds), nodes_to_exclude=FLOAT_PART, calibration_method="minmax",
        pad_channels=False,
    )  # fmt: skip
    assert _conv_output_scale(minmax) == pytest.approx((values.max() - values.min()) / 255, rel=1e-5)
    assert _conv_output_scale(out) < _conv_output_scale(minmax) / 5
    # The quantized model runs, and the float NonZero part sees the same non-outlier values to within a step
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": feeds[0]})[0]
    inside = np.abs(2.0 * feeds[0]) < high
    assert np.abs(y - 2.0 * feeds[0])[inside].max() <= _conv_output_scale(out)


def test_nearly_constant_tensors_do_not_break_the_histograms(tmp_path):
    # A conv whose output spans a few float steps around 3 (3 + 1e-7 x): onnxruntime's own collector fails on
    # such a tensor (np.histogram: "Too many bins for data range"), as on a fresh EfficientNet's sigmoid gates.
    feeds = _feeds()
    y = np.float32(3.0) + np.float32(1e-7) * feeds[0]
    with pytest.raises(ValueError, match="Too many bins"):  # what onnxruntime's collector runs on each tensor
        np.histogram(np.abs(y), bins=2048)
    _graph(tmp_path / "g.onnx")
    model = onnx.load(str(tmp_path / "g.onnx"))
    weights = next(t for t in model.graph.initializer if t.name == "w")
    weights.CopyFrom(numpy_helper.from_array(1e-7 * np.eye(4, dtype=np.float32)[..., None, None], "w"))
    model.graph.initializer.append(numpy_helper.from_array(np.full(4, 3.0, np.float32), "b"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input.append("b")
    onnx.save(model, str(tmp_path / "g.onnx"))
    out = tmp_path / "int8.onnx"
    quantize_int8(
        tmp_path / "g.onnx", out, iter(feeds), nodes_to_exclude=FLOAT_PART, calibration_method="percentile",
        pad_channels=False,
    )  # fmt: skip
    # the range (0, about 3): the whole tensor lies in the top bin of [0, max |y|]
    assert _conv_output_scale(out) == pytest.approx(3.0 / 255, rel=1e-3)


def test_replay_reads_every_batch_once_per_pass():
    feeds = [{"x": np.full(1, i, np.float32)} for i in range(3)]
    replay = Replay(feeds)
    for _ in range(2):  # a calibration reads to the end; the next starts over
        assert [float(b["x"][0]) for b in iter(replay.get_next, None)] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("method", "percentile", "message"),
    [
        ("entropy", 99.9, r"--calibration_method must be one of \['minmax', 'percentile'\], got 'entropy'"),
        ("percentile", 100.5, r"--calibration_percentile must be in \(50, 100\], got 100.5"),
        ("percentile", 5.0, r"--calibration_percentile must be in \(50, 100\], got 5.0"),
    ],
)
def test_bad_calibration_options_are_refused_before_any_file(method, percentile, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        check_calibration_method(method, percentile)
    _graph(tmp_path / "g.onnx")
    out = tmp_path / "int8.onnx"
    with pytest.raises(ValueError, match=message):
        quantize_int8(
            tmp_path / "g.onnx", out, iter(_feeds(1)), calibration_method=method, calibration_percentile=percentile
        )
    assert not out.exists()
