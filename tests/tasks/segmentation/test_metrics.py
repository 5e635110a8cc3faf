import math

import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from tasks.segmentation.metrics import SegmentationMetrics, format_iou_table


def _batches(seed: int = 0, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        target = torch.randint(0, classes, (2, 9, 11), generator=g)
        target[target == 4] = 255  # some ignored pixels
        preds = torch.where(
            torch.rand(target.shape, generator=g) < 0.6,
            target.clamp(max=3),
            torch.randint(0, 4, target.shape, generator=g),
        )
        yield preds, target


def test_matches_torchmetrics_over_batches():
    ours = SegmentationMetrics(4, ignore_index=255)
    jaccard = MulticlassJaccardIndex(4, ignore_index=255, average=None)
    accuracy = MulticlassAccuracy(4, ignore_index=255, average="micro")
    for preds, target in _batches():
        ours.update(preds, target)
        jaccard.update(preds, target)
        accuracy.update(preds, target)
    result = ours.compute()
    torch.testing.assert_close(result["iou"], jaccard.compute())
    torch.testing.assert_close(result["miou"], jaccard.compute().mean())
    torch.testing.assert_close(result["pixel_acc"], accuracy.compute())


def test_dataset_level_iou_and_absent_classes_against_numpy():
    preds = torch.tensor([[[0, 0, 1], [1, 1, 0]]])
    target = torch.tensor([[[0, 255, 1], [1, 0, 0]]])
    metrics = SegmentationMetrics(3)
    metrics.update(preds, target)
    result = metrics.compute()
    # class 0: TP 2, FP 0, FN 1 -> 2/3; class 1: TP 2, FP 1 -> 2/3; class 2 absent everywhere -> NaN, not 0.
    np.testing.assert_allclose(result["iou"][:2].numpy(), [2 / 3, 2 / 3], rtol=1e-6)
    assert math.isnan(result["iou"][2].item())
    assert abs(result["miou"].item() - 2 / 3) < 1e-6
    assert abs(result["pixel_acc"].item() - 4 / 5) < 1e-6
    table = format_iou_table(["road", "car", "bus"], result["iou"], result["miou"].item(), result["pixel_acc"].item())
    assert "road" in table and "n/a" in table and "66.67" in table
