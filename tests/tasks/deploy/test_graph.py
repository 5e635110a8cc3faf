"""The exported graph against PyTorch: every backbone with each task's default head, fp32, through onnxruntime.

onnxruntime runs the file `torch.onnx.export` wrote; its outputs must equal the PyTorch deployable model's
(depth and logits within 1e-4 relative; detection: the same boxes, labels and scores within 1e-4 after NMS)
at two input sizes and two batch sizes. The detection graph's NMS must also give what the training code's
post-processing (`heads.ssdlite.postprocess`, via `DetectionModule.detect`) gives.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from backbones import list_backbones
from tasks.common.data import normalize
from tasks.common.deploy.graph import ImagePreprocess, gather_rows
from tasks.common.deploy.onnx_export import compare_outputs, deployable_model, export_onnx, random_images
from tasks.depth.module import DepthModule
from tasks.detection.module import DetectionModule
from tasks.segmentation.module import SegmentationModule

DEFAULT_SUBSET = ("mobilenet_v2", "mobilenet_v3_large", "ghostnet")
RTOL = 1e-4


def _spread_scores(module: DetectionModule) -> DetectionModule:
    """Spread an untrained head's scores (larger weights, random biases) and boxes (random biases).

    Untrained, every box of a class scores about the same (the bias dominates), so NMS and top-K would
    order near-ties by 1e-6 differences, either way; a trained head's scores differ. The box offsets get
    random biases only: scaling their weights too gave a random EfficientNetV2-S (large features) offsets whose
    exponentiated boxes differed by 8.5e-4 between onnxruntime and PyTorch, both float32; no trained head
    predicts offsets that large.
    """
    with torch.no_grad():
        for predictor in module.head.class_predictors:
            predictor[-1].weight.mul_(20.0)
            predictor[-1].bias.normal_(0.0, 1.0)
        for predictor in module.head.box_predictors:
            predictor[-1].bias.normal_(0.0, 1.0)
    return module


def _modules(backbone: str) -> dict:
    torch.manual_seed(0)
    return {
        "depth": (DepthModule(backbone=backbone), True, [(64, 64), (96, 80)]),
        "segmentation": (SegmentationModule(backbone=backbone, num_classes=5), True, [(64, 64), (96, 80)]),
        # score_thresh 0: every candidate reaches NMS.
        "detection": (
            _spread_scores(
                DetectionModule(backbone=backbone, num_classes=4, score_thresh=0.0, extra_channels=[32, 32, 16, 16])
            ),
            False,
            [(64, 64), (96, 96)],
        ),
    }


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check(task: str, module, dynamic: bool, sizes: list, tmp_path) -> None:
    exports = {sizes[0]: tmp_path / f"{task}.onnx"}
    if dynamic:
        export_onnx(deployable_model(module, sizes[0]), exports[sizes[0]], sizes[0], dynamic_size=True)
    for size in sizes:
        path = exports.get(size)
        if path is None or not path.exists():  # fixed-size graphs (detection): one export per size
            path = tmp_path / f"{task}_{size[0]}x{size[1]}.onnx"
            export_onnx(deployable_model(module, size), path, size, dynamic_size=dynamic)
        session = _session(path)
        graph = deployable_model(module, sizes[0] if dynamic else size)
        for batch in (1, 2):
            errors = compare_outputs(graph, session, random_images(batch, size, seed=batch))
            assert max(errors.values()) <= RTOL, (task, size, batch, errors)


def _run_matrix(backbone: str, tmp_path) -> None:
    for task, (module, dynamic, sizes) in _modules(backbone).items():
        _check(task, module, dynamic, sizes, tmp_path)


@pytest.mark.parametrize("backbone", DEFAULT_SUBSET)
def test_onnxruntime_equals_pytorch(backbone, tmp_path):
    _run_matrix(backbone, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", [b for b in list_backbones() if b not in DEFAULT_SUBSET])
def test_onnxruntime_equals_pytorch_every_backbone(backbone, tmp_path):
    _run_matrix(backbone, tmp_path)


def test_preprocess_equals_the_data_modules_normalization():
    images = random_images(2, (16, 24))
    expected = torch.stack([normalize(im.permute(1, 2, 0).numpy()) for im in images])
    torch.testing.assert_close(ImagePreprocess()(images), expected, rtol=0, atol=1e-6)


def test_detection_graph_gives_the_training_codes_detections():
    torch.manual_seed(0)
    module = DetectionModule(num_classes=4, score_thresh=0.05, extra_channels=[16, 16, 8, 8], detections_per_img=20)
    module.eval()
    graph = deployable_model(module, (96, 96))
    pixels = random_images(3, (96, 96))
    images = ImagePreprocess()(pixels)
    with torch.no_grad():
        boxes, scores, labels, count = graph(pixels)
        reference = module.detect(images, *module(images), [(96, 96)] * 3)
    assert count.tolist() == [len(r["scores"]) for r in reference]
    assert int(count.sum()) > 0  # the comparison is not vacuous
    for i, ref in enumerate(reference):
        n = int(count[i])
        ours = sorted(zip(labels[i, :n].tolist(), scores[i, :n].tolist(), boxes[i, :n].tolist()))
        theirs = sorted(zip(ref["labels"].tolist(), ref["scores"].tolist(), ref["boxes"].tolist()))
        for (la, sa, ba), (lb, sb, bb) in zip(ours, theirs):
            assert la == lb
            np.testing.assert_allclose(sa, sb, rtol=1e-5)
            np.testing.assert_allclose(ba, bb, rtol=1e-5, atol=1e-4)
        assert (scores[i, n:] == 0).all() and (labels[i, n:] == 0).all()  # padding


def test_gather_rows_equals_gather_with_expanded_index():
    values, index = torch.randn(3, 50, 4), torch.randint(0, 50, (3, 17))
    expected = values.gather(1, index.unsqueeze(-1).expand(3, 17, 4))
    assert torch.equal(gather_rows(values, index), expected)
