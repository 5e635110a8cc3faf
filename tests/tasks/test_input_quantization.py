"""The image normalization folded into the int8 graph's input quantization (tasks.common.deploy.input_quantization)."""

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
from tasks.common.deploy.graph import ImagePreprocess  # noqa: E402
from tasks.common.deploy.input_quantization import fold_input_normalization  # noqa: E402
from tasks.common.deploy.quantize import quantize_int8  # noqa: E402

SIZE = 64


class TinyDeployable(nn.Module):
    """uint8 image -> ImagePreprocess -> mobilenet_v2 features -> 1x1 classifier, bilinear to the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.preprocess = ImagePreprocess()
        self.backbone = create_backbone("mobilenet_v2", out_indices=(2,))
        self.classifier = nn.Conv2d(self.backbone.feature_info.channels[-1], 4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, 4, H, W) logits."""
        logits = self.classifier(self.backbone(self.preprocess(images))[-1])
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear")


def _images(count: int, seed: int) -> np.ndarray:
    # smooth random uint8 pictures: low-frequency noise upsampled, 0..255
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(count, 3, 8, 8, generator=g), size=(SIZE, SIZE), mode="bilinear")
    return (x * 255).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = TinyDeployable().eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny_uint8.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(_images(1, 0)),), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


def test_folded_input_quantization_gives_the_same_int8_model_outputs(fp32_model, tmp_path):
    calibration = [_images(1, 10 + i) for i in range(4)]
    plain = quantize_int8(fp32_model, tmp_path / "plain.onnx", iter(calibration), fold_normalization=False)
    folded = quantize_int8(fp32_model, tmp_path / "folded.onnx", iter(calibration))
    assert not plain.normalization_folded and folded.normalization_folded

    # The graph: image -> Pad (uint8, the stem's 4th channel) -> Cast -> Add -> QuantizeLinear (per channel), and no
    # Div / Sub / Mul of the normalization left.
    model = onnx.load(str(tmp_path / "folded.onnx"))
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    path, tensor = [], "image"
    while len(path) < 4:
        quantize = readers[tensor][0]
        path.append(quantize.op_type)
        tensor = quantize.output[0]
    assert path == ["Pad", "Cast", "Add", "QuantizeLinear"]
    axis = next(a.i for a in quantize.attribute if a.name == "axis")
    scales = next(t for t in model.graph.initializer if t.name == quantize.input[1])
    assert axis == 1 and tuple(scales.dims) == (4,)
    assert not any(n.name.startswith("/preprocess/") for n in model.graph.node)

    # The same uint8 stem input, hence the same outputs (up to a rare rounding tie), on held-out images.
    x = _images(3, 99)
    want, got = _run(tmp_path / "plain.onnx", x), _run(tmp_path / "folded.onnx", x)
    step = np.abs(want).max() / 255
    assert np.mean(np.abs(got - want) > 1e-6) < 0.01 and np.abs(got - want).max() <= 4 * step


def test_a_model_without_a_uint8_image_input_is_left_unchanged():
    h = onnx.helper
    f = onnx.TensorProto.FLOAT
    nodes = [
        h.make_node("Div", ["x", "k"], ["n"], name="normalize"),
        h.make_node("QuantizeLinear", ["n", "s", "z"], ["q"], name="quantize"),
        h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dequantize"),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array(255.0, np.float32), "k"),
        onnx.numpy_helper.from_array(np.array(0.01, np.float32), "s"),
        onnx.numpy_helper.from_array(np.array(0, np.uint8), "z"),
    ]
    graph = h.make_graph(
        nodes, "g", [h.make_tensor_value_info("x", f, [1, 3, 4, 4])], [h.make_tensor_value_info("y", f, [1, 3, 4, 4])],
        inits,
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    before = model.SerializeToString()
    assert not fold_input_normalization(model)
    assert model.SerializeToString() == before
