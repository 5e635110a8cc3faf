"""Quantization-aware training at export (`export --int8 --qat_steps N`, tasks/common/deploy/qat.py).

What matters to a user: the QAT file is a QDQ graph that onnxruntime runs with its integer kernels everywhere
(every convolution fused into `QLinearConv`, so it is as fast as the PTQ file), it computes what the
fake-quantized PyTorch network computed, the fine-tuning lowers the task loss, and `validate --onnx` runs on it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nncf", reason='QAT needs the optional NNCF extra: pip install -e ".[qat]"')

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from backbones import fuse_for_inference  # noqa: E402
from heads._layers import interpolation_matrix  # noqa: E402
from tasks.common.deploy.onnx_export import export_module  # noqa: E402
from tasks.common.deploy.qat import (  # noqa: E402
    quantization_aware_training,
    quantize_convolution_outputs,
    quantize_for_training,
    requantize_concats,
)
from tasks.common.deploy.runtime import OnnxModel  # noqa: E402
from tasks.segmentation.datamodule import SegmentationDataModule  # noqa: E402
from tasks.segmentation.module import SegmentationModule  # noqa: E402
from tests.tasks.deploy._cli_tasks import TASKS, cli_args, metrics  # noqa: E402


def _optimized_ops(path, tmp_path) -> list[str]:
    """The op types of the graph onnxruntime runs (after its QDQ fusions)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_qat_export_runs_every_convolution_in_int8_and_validates(name, checkpoints, tmp_path, monkeypatch, capsys):
    main, _, metric, _ = TASKS[name]
    monkeypatch.chdir(tmp_path)
    args = cli_args(name)
    ckpt = str(checkpoints[name])
    main(["export", *args, "--ckpt_path", ckpt, "--output", "fp32.onnx"])
    main(["export", *args, "--ckpt_path", ckpt, "--output", "qat.onnx", "--int8", "--qat_steps=4",
          "--qat_lr=1e-4", "--calibration_batches=1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "int8 by quantization-aware training" in printed and "4 steps at lr 0.0001" in printed
    model = OnnxModel(tmp_path / "qat.onnx")
    assert model.precision == "int8" and model.metadata["quantization"] == "qat" and model.task == name
    graph = onnx.load(str(tmp_path / "qat.onnx")).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}  # no NNCF FakeQuantize left (onnxruntime-loadable)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 20
    # the image normalization folded into the stem input's per-channel QuantizeLinear, as for PTQ (a constant the
    # exporter shares with the output part may keep its /preprocess/ name)
    assert not [n.op_type for n in graph.node if n.name.startswith("/preprocess/") and n.op_type != "Constant"]
    convolutions = sum(n.op_type == "Conv" for n in onnx.load(str(tmp_path / "fp32.onnx")).graph.node)
    readers: dict[str, list] = {}
    for node in graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node)

    def quantized(tensor: str) -> bool:  # read by QuantizeLinear only, possibly through a ReLU / ReLU6
        nodes = readers.get(tensor, [])
        if len(nodes) == 1 and nodes[0].op_type in ("Relu", "Clip"):
            return quantized(nodes[0].output[0])
        return bool(nodes) and all(n.op_type == "QuantizeLinear" for n in nodes)

    # NNCF quantizes the inputs of operations, so a convolution whose output feeds the network's float output
    # part gets no output quantizer: depth's last 1x1 conv (before the sigmoid), detection's 6 + 6 class and box
    # predictor convs; the export gives them a calibrated one (`quantize_convolution_outputs`). So every
    # convolution must run as an integer kernel, not as a float Conv / FusedConv between a dequantize and a
    # quantize (what NNCF's default per-channel activations or a zero point drifted above 0 after a ReLU6 made
    # of 35 and of 12 of 55 convolutions).
    assert not any(n.op_type == "Conv" and not quantized(n.output[0]) for n in graph.node)
    ops = _optimized_ops(tmp_path / "qat.onnx", tmp_path)
    assert ops.count("QLinearConv") == convolutions, sorted(set(ops))
    assert ops.count("Conv") + ops.count("FusedConv") == 0
    # ... and none pays a requantization (a DequantizeLinear straight into a QuantizeLinear left unfused).
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    producers = {o: n.op_type for n in optimized for o in n.output}
    assert not [
        n.name for n in optimized if n.op_type == "QuantizeLinear" and producers.get(n.input[0]) == "DequantizeLinear"
    ]
    quantized = metrics(main(["validate", *args, "--onnx", "qat.onnx"]))
    assert metric in quantized


def test_qat_lowers_the_task_loss_of_the_fake_quantized_network():
    torch.manual_seed(0)
    data = SegmentationDataModule(synthetic_train_size=4, synthetic_val_size=2, synthetic_size=32, crop_size=(32, 32),
                                  batch_size=2)  # fmt: skip
    data.setup("fit")
    module = SegmentationModule(num_classes=data.num_classes, backbone="mobilenet_v2", output_stride=16)
    module.configure_model()
    batches = list(data.train_dataloader())
    calibration = [b["image"] for b in batches]

    def loss_of(network) -> float:
        with torch.no_grad():
            return sum(float(module.network_loss(network(b["image"]), b)) for b in batches) / len(batches)

    before = loss_of(quantize_for_training(fuse_for_inference(module.deployable()), calibration).eval())
    network, report = quantization_aware_training(
        module.deployable(), module.network_loss, calibration, batches, steps=30, lr=1e-3, progress=False
    )
    after = loss_of(network)
    assert report.steps == 30 and report.quantizers > 50
    assert after < 0.9 * before, (before, after)
    # The returned network holds PyTorch FakeQuantize modules (what the exporter writes as QDQ), in eval mode.
    assert any(type(m).__name__ == "FakeQuantize" for m in network.modules()) and not network.training


def test_bad_qat_options_are_refused_before_any_work(checkpoints, tmp_path, monkeypatch):
    main = TASKS["segmentation"][0]
    monkeypatch.chdir(tmp_path)
    args = [*cli_args("segmentation"), "--ckpt_path", str(checkpoints["segmentation"])]
    with pytest.raises(ValueError, match="--qat_steps gives an int8 model: add --int8"):
        main(["export", *args, "--output", "m.onnx", "--qat_steps=3"])
    with pytest.raises(ValueError, match="--qat_steps must be 0"):
        main(["export", *args, "--output", "m.onnx", "--int8", "--qat_steps=-1"])
    with pytest.raises(ValueError, match="--qat_steps is for --format onnx"):
        main(["export", *args, "--output", "m.tflite", "--format", "tflite", "--int8", "--qat_steps=3"])
    assert not list(tmp_path.iterdir())


def test_qat_with_an_empty_calibration_set_is_refused(tmp_path):
    data = SegmentationDataModule(synthetic_train_size=2, synthetic_val_size=2, synthetic_size=32, crop_size=(32, 32),
                                  batch_size=2)  # fmt: skip
    module = SegmentationModule(num_classes=data.num_classes, backbone="mobilenet_v2")
    module.configure_model()
    with pytest.raises(ValueError, match="calibration set is empty"):
        export_module(module, data, tmp_path / "m.onnx", int8=True, calibration=[], qat_steps=2)
    assert not (tmp_path / "m.onnx").exists()


def _concat_graph(scales: tuple[float, float], zero_points: tuple[int, int]):
    """uint8 a, b -> DequantizeLinear each (own scale / zero point) -> Concat -> Relu -> y (float)."""
    inits = []
    for k, (s, z) in enumerate(zip(scales, zero_points)):
        inits += [numpy_helper.from_array(np.array(s, np.float32), f"s{k}"),
                  numpy_helper.from_array(np.array(z, np.uint8), f"z{k}")]  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "s0", "z0"], ["da"]),
        helper.make_node("DequantizeLinear", ["b", "s1", "z1"], ["db"]),
        helper.make_node("Concat", ["da", "db"], ["c"], axis=1, name="concat"),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.UINT8, [1, 2, 4, 4]) for n in ("a", "b")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_requantize_concats_is_exact_on_one_grid_and_within_half_a_step_across_grids():
    rng = np.random.default_rng(0)
    feed = {n: rng.integers(0, 256, (1, 2, 4, 4), dtype=np.uint8) for n in ("a", "b")}
    same = _concat_graph((0.05, 0.05), (10, 10))
    before = _run(same, feed)
    assert requantize_concats(same) == 1
    ops = [n.op_type for n in same.graph.node]
    assert ops[ops.index("Concat") + 1 : ops.index("Concat") + 3] == ["QuantizeLinear", "DequantizeLinear"]
    np.testing.assert_array_equal(_run(same, feed), before)  # one grid: no value changes

    mixed = _concat_graph((0.05, 0.02), (10, 0))
    before = _run(mixed, feed)
    assert requantize_concats(mixed) == 1
    step = (max(255 * 0.02, 245 * 0.05) + 10 * 0.05) / 255  # one grid spanning [-0.5, 12.25]
    assert np.abs(_run(mixed, feed) - before).max() <= step / 2 + 1e-6


def _interpolated_concat_graph(matrix: np.ndarray):
    """uint8 a (1, 2, 4, 4) -> DequantizeLinear -> MatMul by `matrix` (4, 8); Concat with uint8 b (1, 2, 4, 8)."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(10, np.uint8), "z"),
             numpy_helper.from_array(matrix.astype(np.float32), "m")]  # fmt: skip
    nodes = [
        helper.make_node("DequantizeLinear", ["a", "s", "z"], ["da"]),
        helper.make_node("MatMul", ["da", "m"], ["up"], name="resize_columns"),
        helper.make_node("DequantizeLinear", ["b", "s", "z"], ["db"]),
        helper.make_node("Concat", ["up", "db"], ["c"], axis=1, name="concat"),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 2, 4, 4]),
              helper.make_tensor_value_info("b", TensorProto.UINT8, [1, 2, 4, 8])]  # fmt: skip
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_requantize_concats_follows_the_exports_bilinear_matmuls():
    rng = np.random.default_rng(0)
    feed = {
        "a": rng.integers(0, 256, (1, 2, 4, 4), dtype=np.uint8),
        "b": rng.integers(0, 256, (1, 2, 4, 8), dtype=np.uint8),
    }
    columns = interpolation_matrix(4, 8, torch.zeros(())).T.numpy()  # (4, 8): x @ A_w^T upsamples the width
    model = _interpolated_concat_graph(columns)
    before = _run(model, feed)
    assert requantize_concats(model) == 1
    assert np.abs(_run(model, feed) - before).max() <= 0.05 / 2 + 1e-6  # convex combinations: half a step
    # A MatMul by any other matrix (a learned projection) can leave the range: the Concat is left float.
    assert requantize_concats(_interpolated_concat_graph(rng.normal(size=(4, 8)))) == 0


def _float_output_conv_graph():
    """float x -> Q / DQ -> Conv (int8 weights, DQ) -> Reshape -> y: a convolution NNCF leaves float."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(rng.integers(-127, 128, (3, 2, 1, 1), dtype=np.int8), "wq"),
             numpy_helper.from_array(np.full(3, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(3, np.int8), "wz"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="predictor"),
        helper.make_node("Reshape", ["c", "shape"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_quantize_convolution_outputs_makes_the_float_convolution_an_integer_kernel(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(1, 2, 4, 4)).astype(np.float32) for _ in range(3)]
    model = _float_output_conv_graph()
    before = [_run(model, {"x": b}) for b in batches]
    assert quantize_convolution_outputs(model, batches) == 1
    after = [_run(model, {"x": b}) for b in batches]
    step = max(float(np.ptp(np.concatenate([b.ravel() for b in before] + [np.zeros(1)]))) / 255, 1e-8)
    assert max(float(np.abs(a - b).max()) for a, b in zip(after, before)) <= step / 2 + 1e-6  # calibrated range
    onnx.save(model, str(tmp_path / "m.onnx"))
    ops = _optimized_ops(tmp_path / "m.onnx", tmp_path)
    assert "QLinearConv" in ops and "Conv" not in ops
    assert quantize_convolution_outputs(model, batches) == 0  # already quantized: nothing left to do
