"""Nearest upsampling per channel plane in int8 graphs (tasks.common.deploy.resize_planes), run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tasks.common.deploy.quantize import quantize_int8  # noqa: E402
from tasks.common.deploy.resize_planes import resize_per_plane  # noqa: E402


class Upsamplings(nn.Module):
    """The forms torch exports: nearest by scale factor (scales) and to a size (sizes from the input's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.depth = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1, 4H, 4W)."""
        y = F.interpolate(F.relu(self.conv(x)), scale_factor=2, mode="nearest")  # scales, 8 channels
        y = F.relu(self.mix(y))
        z = F.interpolate(y, size=(x.shape[-2] * 4, x.shape[-1] * 4), mode="nearest")  # sizes, 8 channels
        w = F.interpolate(y, size=z.shape[-2:], mode="bilinear")  # not nearest: left alone
        one = F.interpolate(self.depth(y), size=z.shape[-2:], mode="nearest")  # one channel: nothing to gain
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


def _run(model_or_path, x: np.ndarray) -> np.ndarray:
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_nearest_resizes_of_several_channels_run_per_plane_with_the_same_values(exported):
    model = onnx.load(str(exported))
    assert resize_per_plane(model) == 2  # not the bilinear one, not the one-channel one
    onnx.checker.check_model(model)
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    producer = {o: n for n in model.graph.node for o in n.output}
    per_plane = [r for r in resizes if producer[r.input[0]].op_type == "Reshape"]
    assert len(resizes) == 4 and len(per_plane) == 2
    for shape in ((1, 3, 8, 8), (2, 3, 10, 6)):  # dynamic batch and size
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        want, got = _run(exported, x), _run(model, x)
        assert got.shape == want.shape == (shape[0], 1, shape[2] * 4, shape[3] * 4)
        np.testing.assert_array_equal(got, want)  # nearest copies values: exactly equal


def test_quantize_int8_uses_it_and_stays_close_to_fp32(exported, tmp_path):
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    report = quantize_int8(exported, tmp_path / "up_int8.onnx", iter(batches))
    assert report.resizes_per_plane == 2
    # the upsampling sizes read the shapes of quantized tensors, not of dequantized copies made only for them
    model = onnx.load(str(tmp_path / "up_int8.onnx"))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    shapes = [n for n in model.graph.node if n.op_type == "Shape"]
    assert shapes and all(producer.get(n.input[0]) != "DequantizeLinear" for n in shapes)
    assert any(producer.get(n.input[0]) == "QuantizeLinear" for n in shapes)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    want, got = _run(exported, x), _run(tmp_path / "up_int8.onnx", x)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.05
