"""Cityscapes fine annotations, mapped to the 19 train ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.segmentation.datasets.base import IGNORE_INDEX, DatasetSpec, Sample, check_exists

# --- Cityscapes (Cordts et al., CVPR 2016): labelIds -> the 19 train ids of cityscapesScripts' labels.py.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def _cityscapes_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    lut[:34] = IGNORE_INDEX  # the 15 unused label ids (0-6, 9, 10, 14-16, 18, 29, 30) are ignored
    lut[list(_CITYSCAPES_IDS)] = np.arange(len(_CITYSCAPES_IDS))
    return lut


def cityscapes_samples(root: Path, split: str) -> list[Sample]:
    """`leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/<split>/<city>/*_gtFine_labelIds.png`."""
    images = root / "leftImg8bit" / split
    if not images.is_dir():
        raise FileNotFoundError(f"no Cityscapes images at {images} (expected leftImg8bit/<split>/<city>/)")
    samples = []
    for image in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        samples.append(Sample(image, root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"))
    return check_exists(samples, images)


SPEC = DatasetSpec(CITYSCAPES_CLASSES, _cityscapes_lut())
