"""SSD training loss: smooth L1 on matched boxes + classification with hard negatives or focal loss.

Liu et al., "SSD", ECCV 2016, section 2.2 "Training objective" and "Hard negative mining" (3:1);
focal loss: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (https://arxiv.org/abs/1708.02002).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from heads.box_coder import encode_boxes
from tasks.detection.matching import match_default_boxes


def assign_targets(
    targets: Sequence[dict[str, Tensor]],
    default_boxes: Tensor,
    iou_threshold: float = 0.5,
    weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
) -> tuple[Tensor, Tensor]:
    """Class labels and regression targets of every default box of every image.

    Args:
        targets: Per image "boxes" (G, 4) x1y1x2y2 and "labels" (G,) in 1..C-1.
        default_boxes: (A, 4) default boxes.
        iou_threshold: Matching IoU.
        weights: Box-coding weights.

    Returns:
        Labels (N, A) int64 (0 = background) and box targets (N, A, 4) (meaningful where label > 0).
    """
    labels, box_targets = [], []
    for target in targets:
        gt_boxes, gt_labels = target["boxes"], target["labels"]
        matches = match_default_boxes(gt_boxes, default_boxes, iou_threshold)  # (A,)
        matched = matches >= 0
        image_labels = torch.zeros_like(matches)
        image_targets = torch.zeros_like(default_boxes)
        if matched.any():
            image_labels[matched] = gt_labels[matches[matched]]
            image_targets[matched] = encode_boxes(gt_boxes[matches[matched]], default_boxes[matched], weights)
        labels.append(image_labels)
        box_targets.append(image_targets)
    return torch.stack(labels), torch.stack(box_targets)


def ssd_loss(
    box_regression: Tensor,
    cls_logits: Tensor,
    targets: Sequence[dict[str, Tensor]],
    default_boxes: Tensor,
    *,
    iou_threshold: float = 0.5,
    neg_pos_ratio: float = 3.0,
    classification: str = "hard_negative",
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
) -> dict[str, Tensor]:
    """The SSD loss of a batch, normalised by the number of matched default boxes.

    Args:
        box_regression: (N, A, 4) predicted offsets.
        cls_logits: (N, A, C) class logits, class 0 the background.
        targets: Per image "boxes" (G, 4) and "labels" (G,).
        default_boxes: (A, 4) default boxes.
        iou_threshold: Matching IoU.
        neg_pos_ratio: Hard negatives kept per positive ("hard_negative" only).
        classification: "hard_negative" (softmax cross-entropy on positives and the highest-loss
            negatives) or "focal" (sigmoid focal loss on every default box, background = all zeros).
        focal_alpha: Focal-loss alpha.
        focal_gamma: Focal-loss gamma.
        weights: Box-coding weights.

    Returns:
        "loss" (box + class), "box_loss", "cls_loss", "num_pos" (scalars).
    """
    labels, box_targets = assign_targets(targets, default_boxes, iou_threshold, weights)  # (N, A), (N, A, 4)
    positive = labels > 0
    num_pos = positive.sum()
    normaliser = num_pos.clamp(min=1).to(box_regression.dtype)
    box_loss = F.smooth_l1_loss(box_regression[positive], box_targets[positive], beta=1.0, reduction="sum")
    if classification == "hard_negative":
        ce = F.cross_entropy(cls_logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)  # (N, A)
        negative_loss = ce.detach().clone()
        negative_loss[positive] = -float("inf")  # positives never count as negatives
        order = negative_loss.argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)  # (N, A): 0 = hardest negative
        num_neg = (neg_pos_ratio * positive.sum(dim=1, keepdim=True)).long()  # (N, 1)
        hard_negative = rank < num_neg
        cls_loss = (ce[positive].sum() + ce[hard_negative].sum()) / normaliser
    elif classification == "focal":
        one_hot = F.one_hot(labels, cls_logits.shape[-1])[..., 1:].to(cls_logits.dtype)  # (N, A, C-1)
        focal = sigmoid_focal_loss(cls_logits[..., 1:], one_hot, alpha=focal_alpha, gamma=focal_gamma, reduction="sum")
        cls_loss = focal / normaliser
    else:
        raise ValueError(f"classification must be 'hard_negative' or 'focal', got {classification!r}")
    box_loss = box_loss / normaliser
    return {"loss": box_loss + cls_loss, "box_loss": box_loss, "cls_loss": cls_loss, "num_pos": num_pos}
