"""A built-in synthetic dataset: coloured shapes on textured backgrounds, generated on the fly.

It exists so that `python -m tasks.segmentation fit` runs offline and visibly learns: each class is
a shape (disc, square, triangle) with a colour drawn around a class-specific hue, so colour and shape
both carry the label while noise, size and position vary.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle")
_HUES = np.array([[0.45, 0.45, 0.45], [0.85, 0.25, 0.2], [0.2, 0.7, 0.3], [0.25, 0.35, 0.9]])


def synthetic_pair(seed: int, size: int = 128, shapes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic image and its label map.

    Args:
        seed: Sample seed (the dataset index plus a split offset).
        size: Side of the square image.
        shapes: Number of shapes drawn (later ones cover earlier ones).

    Returns:
        (size, size, 3) uint8 image and (size, size) uint8 label map.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = _HUES[0] + rng.uniform(-0.2, 0.2, 3)
    image = np.broadcast_to(base, (size, size, 3)).copy()
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(shapes):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        r = rng.uniform(0.08, 0.22) * size
        if cls == 1:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        elif cls == 2:
            region = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)
        else:  # upward triangle: below the apex, inside two slanted edges
            region = (yy < cy + r) & (yy - (cy - r) > 2 * np.abs(xx - cx))
        image[region] = np.clip(_HUES[cls] + rng.uniform(-0.15, 0.15, 3), 0, 1)
        mask[region] = cls
    image = image + rng.normal(0, 0.06, image.shape)  # sensor-like noise, so colour alone is not exact
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


class SyntheticSegmentationShapes(Dataset):
    """`length` generated samples; the split offsets the seeds so train and val never overlap.

    Args:
        length: Number of samples.
        split_seed: Seed offset of the split.
        size: Image side.
        transform: albumentations-style callable (image=, mask=).
    """

    def __init__(self, length: int, split_seed: int, size: int, transform) -> None:
        self.length, self.split_seed, self.size, self.transform = length, split_seed, size, transform
        self.num_classes = len(SYNTHETIC_CLASSES)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        """Same keys as SegmentationDataset."""
        image, mask = synthetic_pair(self.split_seed * 1_000_003 + index, self.size)
        out = self.transform(image=image, mask=mask)
        return {
            "image": out["image"],
            "mask": torch.as_tensor(out["mask"], dtype=torch.int64),
            "name": f"synthetic_{self.split_seed}_{index:06d}",
            "path": None,
            "size": (self.size, self.size),
        }
