"""Colour palettes, palette PNGs and image | ground truth | prediction panels."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tasks.common.data import denormalize


def palette(num_classes: int) -> np.ndarray:
    """Pascal VOC's colour map (bit-interleaved class index), extended to any number of classes.

    Returns:
        (max(num_classes, 256), 3) uint8 colours; index 255 (ignore) is white-ish grey.
    """
    colours = np.zeros((max(num_classes, 256), 3), dtype=np.uint8)
    for index in range(len(colours)):
        c, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours[index] = (r, g, b)
    colours[255] = (224, 224, 192)  # VOC's boundary colour
    return colours


def overlay(images: Tensor, masks: Tensor, num_classes: int, alpha: float = 0.6) -> Tensor:
    """Blend palette colours of masks over images.

    Args:
        images: (N, 3, H, W) in [0, 1].
        masks: (N, H, W) class indices (255 ignored: shown as the plain image).
        num_classes: For the palette.
        alpha: Weight of the colours.

    Returns:
        (N, 3, H, W) in [0, 1].
    """
    colours = torch.from_numpy(palette(num_classes)).to(images.device).float() / 255
    coloured = colours[masks.clamp(0, len(colours) - 1)].permute(0, 3, 1, 2)  # (N, 3, H, W)
    keep = (masks == 255).unsqueeze(1)
    return torch.where(keep, images, (1 - alpha) * images + alpha * coloured)


def comparison_panel(images: Tensor, targets: Tensor, preds: Tensor, num_classes: int) -> Tensor:
    """Rows of image | ground truth overlay | prediction overlay, for TensorBoard.

    Args:
        images: (N, 3, H, W) normalized images.
        targets: (N, H, W) labels.
        preds: (N, H, W) predictions.
        num_classes: For the palette.

    Returns:
        (3, N * H, 3 * W) image in [0, 1].
    """
    plain = denormalize(images)
    rows = torch.cat([plain, overlay(plain, targets, num_classes), overlay(plain, preds, num_classes)], dim=3)
    return torch.cat(list(rows), dim=1)  # (3, N * H, 3W)
