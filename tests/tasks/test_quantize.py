"""int8 post-training quantization (tasks.common.deploy.quantize), checked with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from backbones import create_backbone  # noqa: E402
from heads._layers import bilinear_resize  # noqa: E402
from tasks.common.deploy.quantize import (  # noqa: E402
    float_nodes,
    fold_scalar_multiplications,
    qdq_wrapped_nodes,
    quantize_int8,
    rewrite_hard_swish,
    rewrite_spatial_mean,
)

SIZE = 64


class TinySegmenter(nn.Module):
    """mobilenet_v3_small (hard-swish, squeeze-excite) + 1x1 classifier + bilinear upsampling to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = create_backbone("mobilenet_v3_small", out_indices=(4,))
        self.classifier = nn.Conv2d(self.backbone.feature_info.channels[-1], 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 5, H, W) logits."""
        return F.interpolate(self.classifier(self.backbone(x)[-1]), size=x.shape[-2:], mode="bilinear")


def _session(path: Path, optimized: Path | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _images(count: int, seed: int) -> list[np.ndarray]:
    # Smooth random "images" (low-frequency noise, upsampled) normalized like ImageNet inputs: closer to real
    # activation statistics than white noise; real photos are used by benchmarks/deploy_latency.py.
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(SIZE, SIZE), mode="bilinear")
        out.append(((x - 0.45) / 0.225).numpy().astype(np.float32))
    return out


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = TinySegmenter().eval()
    with torch.no_grad():  # calibrated-looking BatchNorm statistics, so the random net has sane ranges
        model.train()
        for x in _images(8, 100):
            model(torch.from_numpy(x))
        model.eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(_images(1, 0)[0]),), str(path), dynamo=False, opset_version=17,
        input_names=["images"], output_names=["logits"], dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def int8_model(fp32_model, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("int8") / "tiny_int8.onnx"
    report = quantize_int8(fp32_model, out, iter(_images(8, 1)))
    return out, report


def test_int8_outputs_close_to_fp32_and_every_conv_runs_as_qlinearconv(fp32_model, int8_model, tmp_path):
    path, report = int8_model
    assert report.calibration_batches == 8 and report.hard_swish_rewritten > 0
    x = np.concatenate(_images(4, 7))  # held out from the calibration set
    ref = _session(fp32_model).run(None, {"images": x})[0]
    got = _session(path, tmp_path / "opt.onnx").run(None, {"images": x})[0]
    # Tolerance: uint8 activations with MinMax ranges carry a rounding error of about range/510 per tensor;
    # through the ~50 quantized tensors of mobilenet_v3_small these add up (independent errors) to a few percent
    # of the output's magnitude at most (measured here: 1.0%). 5% bounds that with margin; an int8 graph with a
    # wrong scale or a dropped activation is off by far more (the outputs of two different inputs differ by ~100%).
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 0.05, rel
    assert np.mean(got.argmax(1) == ref.argmax(1)) > 0.9
    # The quantized graph is int8 for onnxruntime: each float Conv became a QLinearConv (with int8 activations,
    # onnxruntime's default, about half of them stay float convolutions between a dequantize and a quantize).
    n_conv = sum(n.op_type == "Conv" for n in onnx.load(str(fp32_model)).graph.node)
    optimized = onnx.load(str(tmp_path / "opt.onnx"))
    assert sum(n.op_type == "QLinearConv" for n in optimized.graph.node) == n_conv
    assert not any(n.op_type == "Conv" for n in optimized.graph.node)
    # ... with the channel counts onnxruntime's fast int8 kernels need (tasks.common.deploy.channel_padding):
    # mobilenet_v3_small's 72-, 88- and 120-channel depthwise convolutions widened to multiples of 16, the stem
    # given a fourth input channel
    assert report.depthwise_widened >= 3 and report.inputs_widened == 1
    groups = [a.i for n in optimized.graph.node if n.op_type == "QLinearConv" for a in n.attribute if a.name == "group"]
    assert groups and all(g % 16 == 0 for g in groups if g > 1)
    # the stem's channel Pad runs on the float image, before its QuantizeLinear, not between a dequantize and a
    # quantize of its own
    pads = [n for n in optimized.graph.node if n.op_type == "Pad"]
    assert len(pads) == 1 and pads[0].name in report.float_nodes
    consumers = [n.op_type for n in optimized.graph.node if pads[0].output[0] in n.input]
    assert consumers == ["QuantizeLinear"]


def test_rule_keeps_documented_ops_float_and_hard_swish_int8(fp32_model, int8_model):
    path, report = int8_model
    model = onnx.load(str(path))
    wrapped = qdq_wrapped_nodes(model)
    ops = [n.op_type for n in model.graph.node]
    # hard-swish rewritten and run in int8: no HardSwish left, its Add/Mul between DequantizeLinear and
    # QuantizeLinear, its Clip absorbed into the quantization range
    assert "HardSwish" not in ops and "Clip" not in ops
    rewritten = [
        n for n in model.graph.node if n.op_type in ("Add", "Mul") and n.name.endswith(("_add3", "_mul", "_div6"))
    ]
    # an Add and a Mul each; the Mul by 1/6 went into the next convolutions' weights or, where a squeeze-excite
    # reads the activation too, into its output's quantization scale (fold_scalar_multiplications)
    assert len(rewritten) == 2 * report.hard_swish_rewritten and all(n.name in wrapped for n in rewritten)
    assert report.scalings_folded > 0
    # squeeze-excite stays int8: timm's spatial mean (ReduceMean) became a GlobalAveragePool, wrapped like the
    # large gating Mul
    pools = [n for n in model.graph.node if n.op_type == "GlobalAveragePool"]
    assert pools and "ReduceMean" not in ops and all(n.name in wrapped for n in pools)
    # every Conv is quantized
    assert all(n.name in wrapped for n in model.graph.node if n.op_type == "Conv")
    # the bilinear Resize that produces the output stays float: no QuantizeLinear after it, output float
    producer = {o: n for n in model.graph.node for o in n.output}
    last = producer[model.graph.output[0].name]
    assert last.op_type == "Resize" and last.name in report.float_nodes
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_hard_swish_rewrite_is_exact_in_float(fp32_model, tmp_path):
    model = onnx.load(str(fp32_model))
    count = sum(n.op_type == "HardSwish" for n in model.graph.node)
    assert count > 0 and rewrite_hard_swish(model) == count
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    x = np.concatenate(_images(2, 3))
    ref = _session(fp32_model).run(None, {"images": x})[0]  # onnxruntime's own HardSwish kernel
    got = _session(tmp_path / "rewritten.onnx").run(None, {"images": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def _scaled_qdq_graph(c: float, extra_reader: bool = False):
    """x -> Q(s_a) -> DQ -> Mul(c, itself dequantized) -> Q(s_b, z_b) -> DQ -> y (and DQ -> y2 with `extra_reader`)."""
    from onnx import TensorProto, helper, numpy_helper

    def scalar(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype=dtype), name)

    inits = [
        scalar("s_a", 0.05, np.float32), scalar("z_a", 10, np.uint8), scalar("s_b", 0.013, np.float32),
        scalar("z_b", 3, np.uint8), scalar("c_q", 85, np.uint8), scalar("c_s", (1 / 6) / 85, np.float32),
        scalar("c_z", 0, np.uint8),
    ]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_a", "z_a"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s_a", "z_a"], ["xd"]),
        helper.make_node("DequantizeLinear", ["c_q", "c_s", "c_z"], ["c"]),
        helper.make_node("Mul", ["xd", "c"], ["m"], name="scale"),
        helper.make_node("QuantizeLinear", ["m", "s_b", "z_b"], ["mq"]),
        helper.make_node("DequantizeLinear", ["mq", "s_b", "z_b"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])]
    if extra_reader:
        nodes.append(helper.make_node("DequantizeLinear", ["xq", "s_a", "z_a"], ["y2"]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [64]))
    if c != 1 / 6:
        inits[4:7] = [scalar("c_q", c, np.float32)]
        nodes[2:3] = []
        nodes[2].input[1] = "c_q"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_scalar_multiplication_folds_into_the_next_quantization_with_one_rounding_less(tmp_path):
    x = np.linspace(0.0, 12.0, 64, dtype=np.float32)  # the range of the first quantization (s_a 0.05, z_a 10)
    model = _scaled_qdq_graph(1 / 6)
    onnx.save(model, str(tmp_path / "before.onnx"))
    assert fold_scalar_multiplications(model) == 1
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "DequantizeLinear"]  # Mul, Q/DQ, 1/6's DQ gone
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "after.onnx"))
    before = _session(tmp_path / "before.onnx").run(None, {"x": x})[0]
    after = _session(tmp_path / "after.onnx").run(None, {"x": x})[0]
    c = np.float32(85) * np.float32((1 / 6) / 85)  # the dequantized constant
    # Folded: x * c quantized once at (s_b, z_b), as numpy computes it (round half to even, as ONNX's Quantize)
    expected = (np.clip(np.rint(x * c / np.float32(0.013)) + 3, 0, 255) - 3) * np.float32(0.013)
    np.testing.assert_allclose(after, expected, rtol=0, atol=1e-6)
    # ... and the unfolded graph rounds x at s_a first: the same values within one step of s_b, not all equal
    assert np.abs(after - before).max() <= 0.013 + 1e-6 and not np.array_equal(after, before)


@pytest.mark.parametrize("c, extra_reader", [(-0.5, False), (1 / 6, True)])
def test_scalar_multiplication_is_not_folded_when_negative_or_its_input_is_read_elsewhere(c, extra_reader):
    model = _scaled_qdq_graph(c, extra_reader)
    nodes = [n.op_type for n in model.graph.node]
    assert fold_scalar_multiplications(model) == 0 and [n.op_type for n in model.graph.node] == nodes


def test_spatial_mean_rewrite_is_exact_and_only_touches_means_over_height_and_width(fp32_model, tmp_path):
    model = onnx.load(str(fp32_model))
    means = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    assert means and rewrite_spatial_mean(model) == len(means)  # timm's squeeze-excite blocks
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    x = np.concatenate(_images(2, 3))
    ref = _session(fp32_model).run(None, {"images": x})[0]
    got = _session(tmp_path / "rewritten.onnx").run(None, {"images": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())

    h = onnx.helper
    f = onnx.TensorProto.FLOAT
    nodes = [
        h.make_node("ReduceMean", ["x"], ["hw"], name="hw", axes=[-2, -1], keepdims=1),
        h.make_node("ReduceMean", ["x"], ["flat"], name="flat", axes=[2, 3], keepdims=0),
        h.make_node("ReduceMean", ["x"], ["c"], name="c", axes=[1], keepdims=1),
        h.make_node("ReduceMean", ["v"], ["v3"], name="rank3", axes=[1, 2], keepdims=1),
    ]
    graph = h.make_graph(
        nodes, "g",
        [h.make_tensor_value_info("x", f, [1, 3, 4, 4]), h.make_tensor_value_info("v", f, [1, 4, 4])],
        [h.make_tensor_value_info(n, f, None) for n in ("hw", "flat", "c", "v3")],
    )  # fmt: skip
    toy = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    assert rewrite_spatial_mean(toy) == 1
    assert [n.op_type for n in toy.graph.node] == ["GlobalAveragePool", "ReduceMean", "ReduceMean", "ReduceMean"]


def test_float_nodes_rule_by_op_type_and_pattern():
    h = onnx.helper
    f = onnx.TensorProto.FLOAT
    nodes = [
        h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        h.make_node("Resize", ["c", "", "s"], ["up"], name="up_nearest", mode="nearest"),
        h.make_node("Resize", ["up", "", "s"], ["lin"], name="up_linear", mode="linear"),
        h.make_node("Conv", ["lin", "w2"], ["d"], name="conv2"),
        h.make_node("Transpose", ["d"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
        h.make_node("Reshape", ["t", "shape"], ["y"], name="flatten_boxes"),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"),
        onnx.numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w2"),
        onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s"),
        onnx.numpy_helper.from_array(np.array([1, -1, 4], np.int64), "shape"),
    ]
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", f, [1, 3, 4, 4])], [h.make_tensor_value_info("y", f, None)], inits
    )
    assert sorted(float_nodes(h.make_model(graph))) == ["flatten_boxes", "to_nhwc", "up_linear"]


def test_empty_calibration_set_is_a_clear_error(fp32_model, tmp_path):
    out = tmp_path / "int8.onnx"
    with pytest.raises(ValueError, match="calibration set .* is empty.*'images'"):
        quantize_int8(fp32_model, out, iter([]))
    assert not out.exists()


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((1, 3, SIZE, SIZE + 1), np.float32), r"shape \[1, 3, 64, 65\].*expects \['n', 3, 64, 64\]"),
        (np.zeros((3, SIZE, SIZE), np.float32), r"shape \[3, 64, 64\]"),
        (np.zeros((1, 3, SIZE, SIZE), np.float64), "dtype float64.*float32"),
    ],
)
def test_bad_calibration_batch_is_a_clear_error(fp32_model, tmp_path, batch, message):
    out = tmp_path / "int8.onnx"
    with pytest.raises(ValueError, match=message):
        quantize_int8(fp32_model, out, iter([batch]))
    assert not out.exists()


def test_failure_during_calibration_leaves_no_file(fp32_model, tmp_path):
    # The bad batch comes third, so the failure happens inside onnxruntime's calibration, after the output's
    # temporary file exists: neither a partial model nor the temporary file is left, an older model survives.
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"previous model")
    good = _images(2, 5)
    with pytest.raises(ValueError, match="calibration batch 2 .*shape"):
        quantize_int8(fp32_model, out, iter([*good, np.zeros((1, 3, 32, 32), np.float32)]))
    assert out.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]
    missing = tmp_path / "none" / "int8.onnx"
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        quantize_int8(tmp_path / "missing.onnx", missing, iter(good))
    assert not missing.exists()


class _ConvUpsampleProject(nn.Module):
    """conv -> bilinear resize to the input size (two MatMuls in ONNX) -> MatMul by a learned (W, W) matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=8, padding=1)
        self.project = nn.Parameter(torch.randn(SIZE, SIZE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 4, H, W)."""
        return bilinear_resize(self.conv(x), x.shape[-2:]) @ self.project


@pytest.mark.parametrize("dynamic_size", [True, False], ids=["dynamic", "static"])
def test_interpolation_matmuls_stay_float_and_other_matmuls_do_not(dynamic_size, tmp_path):
    path = tmp_path / "up.onnx"
    axes = {"images": {0: "n", 2: "h", 3: "w"}} if dynamic_size else {"images": {0: "n"}}
    torch.onnx.export(
        _ConvUpsampleProject().eval(), (torch.from_numpy(_images(1, 0)[0]),), str(path), dynamo=False,
        opset_version=17, input_names=["images"], output_names=["y"], dynamic_axes=axes, do_constant_folding=True,
    )  # fmt: skip
    model = onnx.load(str(path))
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 3
    kept = set(float_nodes(model))
    # The learned projection is the last MatMul (its input is the resized map): quantized as usual.
    assert [n.name in kept for n in matmuls] == [True, True, False]
