"""Image + depth preprocessing and augmentation (albumentations), turning samples into tensors.

Depth moves with the image as a `mask` target, resized with nearest neighbour so that no invalid
(zero) pixel is blended into a valid one. Zooming in by s makes the scene look s times closer, so
the scale augmentation divides depth by s (Eigen et al., NIPS 2014), keeping image and depth consistent.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import torch

from tasks.common.data import normalize


def sanitize_depth(depth: np.ndarray) -> np.ndarray:
    """Float32 depth with every invalid value (NaN, inf, negative) set to 0, the "no measurement" mark."""
    depth = np.asarray(depth, dtype=np.float32)
    # NaN fails both comparisons; one pass less than isfinite & > 0, and no float64 round trip.
    return np.where((depth > 0) & (depth < np.inf), depth, np.float32(0.0))


class DepthTransform:
    """Resize (and for training augment) an (image, depth) pair and convert it to tensors.

    Args:
        size: (height, width) of the network input.
        train: Apply augmentation: scale (zoom 1 to `max_scale`, depth / scale) + random crop,
            horizontal flip, colour jitter.
        max_scale: Largest zoom factor of the scale augmentation.
        flip: Horizontal flip probability in training.
        photometric: Colour jitter probability in training.
    """

    def __init__(
        self,
        size: tuple[int, int],
        train: bool = False,
        max_scale: float = 1.25,
        flip: float = 0.5,
        photometric: float = 0.8,
    ) -> None:
        self.size, self.train, self.max_scale = (int(size[0]), int(size[1])), train, max_scale
        self.resize = A.Resize(*self.size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)
        self.augment = A.Compose(
            [
                A.HorizontalFlip(p=flip),
                A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=photometric),
            ]
        )
        # Our own generator (not the `random` module's), so `set_random_seed` makes a sample reproducible.
        self.rng = random.Random()

    def set_random_seed(self, seed: int) -> None:
        """Seed the zoom and the albumentations steps (`tasks.common.sampling` does it per sample)."""
        self.rng.seed(seed)
        self.resize.set_random_seed(seed)
        self.augment.set_random_seed(self.rng.randrange(2**32))

    def __call__(self, *, image: np.ndarray, depth: np.ndarray | None = None) -> dict:
        """(H, W, 3) uint8 image, (H, W) depth in metres -> {"image": (3, h, w), "depth": (1, h, w)}.

        Without a depth (predict), only the image is resized and normalized.
        """
        if depth is None:
            return {"image": normalize(self.resize(image=image)["image"])}
        depth = sanitize_depth(depth)
        height, width = self.size
        if self.train and self.max_scale > 1:
            scale = self.rng.uniform(1.0, self.max_scale)
            zoom = A.Compose(
                [
                    A.Resize(
                        round(height * scale),
                        round(width * scale),
                        interpolation=cv2.INTER_LINEAR,
                        mask_interpolation=cv2.INTER_NEAREST,
                    ),
                    A.RandomCrop(height, width),
                ],
                seed=self.rng.randrange(2**32),
            )
            out = zoom(image=image, mask=depth)
            image, depth = out["image"], out["mask"] / scale
        else:
            out = self.resize(image=image, mask=depth)
            image, depth = out["image"], out["mask"]
        if self.train:
            out = self.augment(image=image, mask=depth)
            image, depth = out["image"], out["mask"]
        return {
            "image": normalize(image),  # (3, h, w)
            "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None],  # (1, h, w)
        }


def train_transform(image_size: tuple[int, int], max_scale: float = 1.25) -> DepthTransform:
    """Depth-consistent zoom and crop, flip, colour jitter, to `image_size` (height, width)."""
    return DepthTransform(image_size, train=True, max_scale=max_scale)


def eval_transform(image_size: tuple[int, int]) -> DepthTransform:
    """Resize to `image_size` (area for the image, nearest for depth) and normalize."""
    return DepthTransform(image_size)
