"""Dataset-level segmentation metrics: per-class IoU, mIoU, pixel accuracy, from one confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix


class SegmentationMetrics(Metric):
    """Accumulates a confusion matrix over a dataset (pixels labelled `ignore_index` are skipped).

    IoU of a class is TP / (TP + FP + FN) over the whole dataset (not averaged per image); classes
    that appear neither in the labels nor in the predictions are NaN and left out of the mean, as
    the Cityscapes and mmsegmentation evaluations do.

    Args:
        num_classes: Number of classes.
        ignore_index: Label value that is not scored.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: preds and target (N, H, W) class indices."""
        self.confusion.update(preds.flatten(), target.flatten())

    def compute(self) -> dict[str, Tensor]:
        """{"iou": (K,) per class, "miou", "pixel_acc", "mean_acc"} over everything seen."""
        cm = self.confusion.compute().double()  # (K, K): rows are labels, columns predictions
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        per_class_acc = torch.where(cm.sum(1) > 0, tp / cm.sum(1).clamp(min=1), torch.full_like(tp, float("nan")))
        return {
            "iou": iou.float(),
            "miou": iou.nanmean().float(),
            "pixel_acc": (tp.sum() / cm.sum().clamp(min=1)).float(),
            "mean_acc": per_class_acc.nanmean().float(),
        }

    def reset(self) -> None:
        """Clear the confusion matrix."""
        super().reset()
        self.confusion.reset()


def format_iou_table(class_names: Sequence[str], iou: Tensor, miou: float, pixel_acc: float) -> str:
    """A plain-text per-class IoU table for the console.

    Args:
        class_names: One name per class.
        iou: (K,) per-class IoU (NaN: class absent).
        miou: Mean IoU.
        pixel_acc: Pixel accuracy.

    Returns:
        The table, one class a line.
    """
    width = max(8, *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
    for name, value in zip(class_names, iou.tolist()):
        lines.append(f"{name:<{width}}  {'   n/a' if value != value else f'{100 * value:6.2f}'}")
    lines += [
        "-" * (width + 9),
        f"{'mIoU':<{width}}  {100 * miou:6.2f}",
        f"{'pixel acc':<{width}}  {100 * pixel_acc:6.2f}",
    ]
    return "\n".join(lines)
