"""TFLite / LiteRT export (tasks.common.deploy.tflite_export), checked with the LiteRT interpreter.

The conversion tests need the optional extra (`pip install -e ".[tflite]"`) and skip with that reason
without it; the graph rewrites (layout, the image-pooling workaround, calibration checks) are tested always.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from tasks.common.deploy.graph import DeployableModel
from tasks.common.deploy.onnx_export import deployable_model, random_images
from tasks.common.deploy.tflite_export import (
    Interpreter,
    TFLiteGraph,
    _checked_calibration,
    _convert,
    export_tflite,
    require_litert,
    tflite_friendly,
)
from tasks.segmentation.deploy import SegmentationOutputs

HAVE_LITERT = all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_litert"))
needs_litert = pytest.mark.skipif(
    not HAVE_LITERT, reason='litert-torch / ai-edge-litert not installed (pip install -e ".[tflite]")'
)


class TinySegmenter(nn.Module):
    """Stride-2 conv + image pooling-like broadcast + 1x1 classifier, upsampled: (N, 3, H, W) -> (N, 4, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.classifier = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 4, H, W)."""
        y = self.classifier(self.conv(x))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _tiny_graph(layout: str) -> TFLiteGraph:
    torch.manual_seed(0)
    net = TinySegmenter().eval()
    with torch.no_grad():
        net.conv[1].running_mean.normal_()
        net.conv[1].running_var.uniform_(0.5, 2.0)
    return TFLiteGraph(DeployableModel(net, SegmentationOutputs(4)).eval(), layout)


def test_nhwc_graph_is_the_nchw_graph_transposed():
    images = random_images(2, (32, 48))
    nchw, nhwc = _tiny_graph("nchw"), _tiny_graph("nhwc")
    with torch.no_grad():
        a = nchw(images)
        b = nhwc(nhwc.input_from_nchw(images))
    assert b["logits"].shape == (2, 32, 48, 4)
    torch.testing.assert_close(b["logits"], a["logits"].permute(0, 2, 3, 1), rtol=0, atol=0)
    assert torch.equal(b["classes"], a["classes"])  # the class map has no channel axis to move


def test_bad_layout_is_refused():
    with pytest.raises(ValueError, match="layout must be one of"):
        _tiny_graph("hwc")


def test_tflite_friendly_image_pooling_equals_the_original():
    from tasks.segmentation.module import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(num_classes=5)  # default head deeplabv3_mobile: ASPP with image pooling
    model = deployable_model(module, (64, 64))
    friendly = tflite_friendly(model)
    from heads._layers import ImagePooling

    assert any(isinstance(m, ImagePooling) for m in model.modules())
    assert not any(isinstance(m, ImagePooling) for m in friendly.modules())
    images = random_images(2, (64, 80))
    with torch.no_grad():
        for a, b in zip(model(images), friendly(images)):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_calibration_of_another_size_or_dtype_is_refused():
    model = _tiny_graph("nchw").model
    with pytest.raises(ValueError, match=r"uint8 \(N, 3, 32, 32\).*got uint8 \[1, 3, 32, 48\]"):
        _checked_calibration(random_images(1, (32, 48)).numpy(), (32, 32), model)
    with pytest.raises(ValueError, match="got float32"):
        _checked_calibration(np.zeros((1, 3, 32, 32), np.float32), (32, 32), model)


def test_missing_litert_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "litert_torch":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"litert_torch.*\[tflite\]"):
        require_litert()


@needs_litert
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_tiny_graph_in_the_interpreter_equals_pytorch(tmp_path, layout):
    graph = _tiny_graph(layout)
    size = (32, 48)
    path = tmp_path / "tiny.tflite"
    _convert(graph, graph.input_from_nchw(random_images(1, size)), path)
    interpreter = Interpreter(path, threads=1)
    images = graph.input_from_nchw(random_images(1, size, seed=3))
    assert interpreter.input_shape == tuple(images.shape) and interpreter.input_dtype == np.uint8
    out = interpreter(images.numpy())
    with torch.no_grad():
        ref = graph(images)
    assert set(out) == {"logits", "classes"}  # the file's outputs carry the graph's names
    logits = ref["logits"].numpy()
    assert np.abs(out["logits"] - logits).max() <= 1e-4 * np.abs(logits).max()
    assert np.array_equal(out["classes"], ref["classes"].numpy())
    with pytest.raises(ValueError, match=r"takes uint8 \[1, .*got float32"):
        interpreter(images.numpy().astype(np.float32))


def _default_module(task: str):
    torch.manual_seed(0)
    if task == "depth":
        from tasks.depth.module import DepthModule

        return DepthModule(), (96, 128)
    if task == "segmentation":
        from tasks.segmentation.module import SegmentationModule

        return SegmentationModule(num_classes=12), (128, 160)
    from tasks.detection.module import DetectionModule

    return DetectionModule(num_classes=4), (320, 320)


@needs_litert
@pytest.mark.slow
@pytest.mark.parametrize("task", ["depth", "segmentation", "detection"])
def test_default_model_fp32_and_int8(tmp_path, task):
    """fp32: every output (and detection's post-NMS detections) within 1e-4 of PyTorch; int8 runs, is smaller."""
    module, size = _default_module(task)
    fp32 = export_tflite(module, tmp_path / "fp32.tflite", size)
    assert fp32.input_shape == [1, *size, 3]
    assert all(err <= 1e-4 for err in fp32.fp32_errors.values()), fp32.fp32_errors
    if task == "detection":
        assert set(fp32.outputs) == {"box_regression", "cls_logits", "default_boxes"}
        assert "detections" in fp32.fp32_errors
    calibration = [random_images(2, size, seed=s).numpy() for s in (10, 11)]
    int8 = export_tflite(module, tmp_path / "int8.tflite", size, int8=True, calibration=calibration)
    assert int8.size_bytes < 0.5 * fp32.size_bytes  # int8 weights: about a quarter of float32
    out = Interpreter(int8.path)(random_images(1, size).permute(0, 2, 3, 1).contiguous().numpy())  # NHWC
    assert all(np.isfinite(v).all() for v in out.values())
    # Agreement with fp32 (random weights, random-image calibration: a loose bound, not an accuracy figure;
    # it catches outputs quantized with a wrong scale, which read as all zeros: relative error 1). Detection
    # sets after NMS of a random head change with any rounding, so they are not bounded here.
    for name, err in int8.int8_errors.items():
        if name != "detections":
            assert err < 0.6, int8.int8_errors


@needs_litert
@pytest.mark.slow
def test_failed_int8_leaves_no_file(tmp_path):
    module, size = _default_module("depth")
    target = tmp_path / "model.tflite"
    with pytest.raises(ValueError, match="calibration set is empty"):
        export_tflite(module, target, size, int8=True, calibration=[])
    assert list(tmp_path.iterdir()) == []
