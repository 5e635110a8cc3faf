"""What every depth dataset shares: samples as (image, depth, name), checked, transformed into a dict."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset


class DepthDataset(Dataset):
    """Base of the depth datasets: subclasses implement `__len__` and `load(index)`.

    An item is the transform's output (`{"image": (3, h, w), "depth": (1, h, w)}`) plus "name" (unique
    within the split: what predictions are saved as), "path" (the colour file, or None) and "size"
    ((H, W) of the stored image); without a transform, the raw (H, W, 3) uint8 image and (H, W) metres.

    Args:
        transform: Callable(image=, depth=) -> dict, e.g. `tasks.depth.transforms.train_transform(...)`.
    """

    def __init__(self, transform: Callable[..., dict] | None = None) -> None:
        self.transform = transform

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str, str | None]:
        """(H, W, 3) uint8 image, (H, W) float32 depth in metres (0 = unknown), name, path or None."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        image, depth, name, path = self.load(index)
        if image.shape[:2] != depth.shape[:2]:
            raise ValueError(
                f"image and depth of '{name}' differ in size: image {image.shape[:2]}, depth {depth.shape[:2]}"
            )
        sample = self.transform(image=image, depth=depth) if self.transform else {"image": image, "depth": depth}
        return {**sample, "name": name, "path": path, "size": tuple(image.shape[:2])}
