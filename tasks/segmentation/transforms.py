"""albumentations pipelines: DeepLab-style training augmentation, plain evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from tasks.common.data import IMAGENET_MEAN, IMAGENET_STD
from tasks.segmentation.datasets import IGNORE_INDEX


def _resize(base_size: int | None) -> list[A.BasicTransform]:
    # Bilinear for the image, nearest for the mask (albumentations' mask default), so labels stay labels.
    return [] if base_size is None else [A.LongestMaxSize(max_size=base_size, interpolation=cv2.INTER_LINEAR)]


def train_transform(
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: bool = True,
    photometric: bool = True,
    base_size: int | None = None,
) -> A.Compose:
    """Random scale, crop padded with the ignore label, flip, colour jitter, normalize.

    The DeepLab recipe (random scale 0.5-2.0, 513x513 crop with ignore padding, left-right flip).

    Args:
        crop_size: (height, width) of the training crop.
        scale_range: Range of the random rescaling factor.
        hflip: Random left-right flip.
        photometric: Random brightness, contrast, saturation and hue.
        base_size: Resize the longer side to this first (reduced-resolution training), or None.

    Returns:
        A pipeline called as `t(image=uint8 HWC, mask=uint8 HW)`.
    """
    height, width = crop_size
    low, high = scale_range
    steps = _resize(base_size)
    if (low, high) != (1.0, 1.0):
        steps.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR, p=1.0))
    steps += [
        A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
        A.RandomCrop(height, width),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if photometric:
        steps.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8))
    steps += [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]
    return A.Compose(steps)


def eval_transform(base_size: int | None = None) -> A.Compose:
    """Normalize only (full resolution), or resize the longer side to `base_size` first."""
    return A.Compose([*_resize(base_size), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])
