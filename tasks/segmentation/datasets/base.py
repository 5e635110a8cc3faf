"""A segmentation dataset as (image file, label file) pairs, with the checks real data needs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.common.images import orientation_note, read_label_map, read_rgb

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Sample:
    """One image and its label map (None where there is none, e.g. for prediction)."""

    image: Path
    mask: Path | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Classes of a dataset and the mapping from its stored label values.

    Attributes:
        class_names: One name per train id.
        lut: Raw value -> train id (IGNORE_INDEX ignored, -1 invalid); None keeps 0..K-1 and 255.
    """

    class_names: tuple[str, ...]
    lut: np.ndarray | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


def read_list(path: Path) -> list[str]:
    """First field of every non-empty line of a split list (image ids or stems).

    Raises:
        FileNotFoundError: No such list.
    """
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def identity_lut(num_classes: int, ignore_values: Sequence[int] = (IGNORE_INDEX,)) -> np.ndarray:
    """Lookup table keeping 0..num_classes-1, sending `ignore_values` to IGNORE_INDEX and all else to -1."""
    lut = np.full(max(256, num_classes, *ignore_values, 0) + 1, -1, dtype=np.int64)
    lut[:num_classes] = np.arange(num_classes)
    lut[list(ignore_values)] = IGNORE_INDEX
    return lut


def check_exists(samples: Sequence[Sample], source: str | os.PathLike) -> list[Sample]:
    """Fail at setup, naming the list and the file, if any listed file is missing.

    Args:
        samples: The pairs.
        source: Where the pairs were listed (a list file or folder), for the message.

    Returns:
        The samples, unchanged.

    Raises:
        FileNotFoundError: A listed image or mask does not exist.
        ValueError: The list is empty.
    """
    if not samples:
        raise ValueError(f"no samples found in {source}")
    for sample in samples:
        for path in (sample.image, sample.mask):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"{source} lists {path}, which does not exist")
    return list(samples)


class SegmentationDataset(Dataset):
    """Reads pairs, maps raw label values to train ids, validates, augments.

    Args:
        samples: The (image, mask) pairs.
        num_classes: Classes after the mapping.
        lut: Raw label value -> train id (IGNORE_INDEX to ignore, -1 for values that must not occur).
        transform: albumentations-style callable `transform(image=, mask=) -> {"image": (3, H, W)
            tensor, "mask": (H, W) tensor}`.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        num_classes: int,
        lut: np.ndarray | None,
        transform: Callable[..., dict],
    ) -> None:
        self.samples = list(samples)
        self.num_classes = num_classes
        self.lut = identity_lut(num_classes) if lut is None else lut
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def read_mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        """Read, check and map one label map to train ids (IGNORE_INDEX for ignored pixels).

        Raises:
            ValueError: The map's size differs from the image's, or it holds values that are neither
                a class nor ignored.
        """
        raw = read_label_map(sample.mask)
        if raw.shape != shape:
            raise ValueError(
                f"mask {sample.mask} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {sample.image} is "
                f"{shape[1]}x{shape[0]}; a label map must have its image's size"
                f"{orientation_note(sample.image, raw.shape)}"
            )
        bad = np.unique(raw[(raw < 0) | (raw >= len(self.lut))])
        mapped = self.lut[np.clip(raw, 0, len(self.lut) - 1)]
        bad = np.union1d(bad, np.unique(raw[mapped < 0]))
        if bad.size:
            raise ValueError(
                f"mask {sample.mask} holds label values {bad[:10].tolist()} that are neither one of the "
                f"{self.num_classes} classes nor ignored ({IGNORE_INDEX}); is num_classes or the dataset type wrong?"
            )
        return mapped.astype(np.uint8)

    def __getitem__(self, index: int) -> dict:
        """A dict: "image" (3, H, W) float, "mask" (H, W) int64, "name", "path", "size" (H, W) of the file."""
        sample = self.samples[index]
        image = read_rgb(sample.image)
        height, width = image.shape[:2]
        if sample.mask is None:
            out = self.transform(image=image)
            return {
                "image": out["image"],
                "name": sample.image.stem,
                "path": str(sample.image),
                "size": (height, width),
            }
        mask = self.read_mask(sample, (height, width))
        out = self.transform(image=image, mask=mask)
        return {
            "image": out["image"],
            "mask": torch.as_tensor(out["mask"], dtype=torch.int64),
            "name": sample.image.stem,
            "path": str(sample.image),
            "size": (height, width),
        }
