"""Nearest Resizes of int8 graphs as uint8 Gathers (tasks.common.deploy.resize_gathers), run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from tasks.common.deploy.quantize import quantize_int8  # noqa: E402
from tasks.common.deploy.resize_gathers import gather_nearest_resizes  # noqa: E402


class Upsamplings(nn.Module):
    """The forms torch exports: nearest by scale factor (scales) and to a size (sizes from the input's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.depth = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1, 3H, 3W)."""
        y = F.interpolate(F.relu(self.conv(x)), scale_factor=2, mode="nearest")  # scales, 8 channels
        y = F.relu(self.mix(y))
        # sizes, a 1.5x ratio: source rows floor(i / 1.5) are not a pattern of repeats
        z = F.interpolate(y, size=(x.shape[-2] * 3, x.shape[-1] * 3), mode="nearest")
        w = F.interpolate(y, size=z.shape[-2:], mode="bilinear")  # not nearest: left alone
        one = F.interpolate(self.depth(y), size=z.shape[-2:], mode="nearest")  # one channel
        return self.depth(z + w) + one


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "up.onnx"
    torch.onnx.export(
        Upsamplings().eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
        input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):
    """The int8 model with its Resizes as they are, and as gathers."""
    folder = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    resizes = quantize_int8(exported, folder / "resize.onnx", iter(batches), gather_resize=False)
    gathers = quantize_int8(exported, folder / "gather.onnx", iter(batches), gather_resize=True)
    return folder / "resize.onnx", resizes, folder / "gather.onnx", gathers


def _mode(resize) -> bytes:
    return next(a.s for a in resize.attribute if a.name == "mode")


def _run(model_or_path, x: np.ndarray) -> np.ndarray:
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_gathers_give_the_resizes_values_exactly_at_dynamic_sizes(quantized):
    resize_path, resizes, gather_path, gathers = quantized
    assert resizes.resizes_as_gathers == 0 and gathers.resizes_as_gathers == 3  # the nearest ones, 1 or 8 channels
    model = onnx.load(str(gather_path))
    onnx.checker.check_model(model)
    assert [_mode(n) for n in model.graph.node if n.op_type == "Resize"] == [b"linear"]  # the bilinear one is left
    for shape in ((1, 3, 8, 8), (2, 3, 7, 5)):  # dynamic batch and size; odd sizes
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        want, got = _run(resize_path, x), _run(gather_path, x)
        assert got.shape == want.shape == (shape[0], 1, shape[2] * 3, shape[3] * 3)
        np.testing.assert_array_equal(got, want)  # the same uint8 values: exactly equal outputs


def test_int8_stays_close_to_fp32_and_shapes_read_quantized_tensors(exported, quantized):
    _, _, gather_path, _ = quantized
    # the upsampling sizes read the shapes of quantized tensors, not of dequantized copies made only for them
    model = onnx.load(str(gather_path))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    shapes = [n for n in model.graph.node if n.op_type == "Shape"]
    assert shapes and all(producer.get(n.input[0]) != "DequantizeLinear" for n in shapes)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want, got = _run(exported, x), _run(gather_path, x)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.05


def test_a_resize_that_requantizes_is_left_alone(quantized):
    resize_path, _, _, _ = quantized
    model = onnx.load(str(resize_path))
    consumers = {i: n for n in model.graph.node for i in n.input}
    initializers = {t.name: t for t in model.graph.initializer}
    nearest = [n for n in model.graph.node if n.op_type == "Resize" and _mode(n) == b"nearest"]
    quantize = consumers[nearest[0].output[0]]
    scale = numpy_helper.to_array(initializers[quantize.input[1]])
    # a new output scale of its own: the Resize now changes the uint8 values, a Gather would not
    model.graph.initializer.append(numpy_helper.from_array((scale * 2).astype(np.float32), "other_scale"))
    quantize.input[1] = "other_scale"
    assert gather_nearest_resizes(model) == len(nearest) - 1
    assert nearest[0] in list(model.graph.node)
