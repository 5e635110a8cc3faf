"""Pixel-wise cross-entropy with an ignore label, safe on crops where every pixel is ignored."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean cross-entropy over the labelled pixels.

    Args:
        logits: (N, K, H, W) class scores.
        target: (N, H, W) class indices, `ignore_index` for unlabelled pixels.
        ignore_index: Label value left out.

    Returns:
        Scalar loss; 0 (still in the graph) when no pixel is labelled, where the plain mean is 0 / 0.
    """
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)
