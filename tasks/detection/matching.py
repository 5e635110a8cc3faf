"""Assigning ground-truth boxes to default boxes (SSD's matching strategy).

Liu et al., "SSD", ECCV 2016, section 2.2 "Matching strategy": each ground-truth box keeps the default
box it overlaps most, and every default box with IoU >= 0.5 to some ground truth is matched to it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


def match_default_boxes(gt_boxes: Tensor, default_boxes: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Index of the ground truth each default box predicts, or -1 for background.

    Args:
        gt_boxes: (G, 4) ground truth x1y1x2y2 (G may be 0).
        default_boxes: (A, 4) default boxes x1y1x2y2.
        iou_threshold: Minimum IoU of a match (besides each ground truth's best default box).

    Returns:
        (A,) int64 indices into `gt_boxes`, -1 where unmatched.
    """
    num_defaults = default_boxes.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((num_defaults,), -1, dtype=torch.long, device=default_boxes.device)
    iou = box_iou(gt_boxes, default_boxes)  # (G, A)
    best_iou, matches = iou.max(dim=0)  # (A,)
    matches[best_iou < iou_threshold] = -1
    # Every ground truth keeps its best default box, even below the threshold; later ground truths
    # win a default box that is the best of several (as torchvision's SSDMatcher).
    best_default = iou.argmax(dim=1)  # (G,)
    matches[best_default] = torch.arange(gt_boxes.shape[0], device=matches.device)
    return matches
