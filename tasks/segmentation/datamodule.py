"""The segmentation LightningDataModule: synthetic by default, real formats by name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tasks.common.data import TaskDataModule
from tasks.segmentation.datasets import (
    FORMATS,
    IGNORE_INDEX,
    SYNTHETIC_CLASSES,
    SegmentationDataset,
    SyntheticSegmentationShapes,
    folder_samples,
)
from tasks.segmentation.transforms import eval_transform, train_transform

# Seed offsets of the synthetic splits, so no split repeats another's images.
SYNTHETIC_SEEDS = {"train": 1, "val": 2, "test": 3}


def pad_collate(batch: list[dict]) -> dict:
    """Stack samples of different sizes: images padded with 0 and masks with the ignore index, bottom-right.

    Evaluation runs at each image's own resolution, so a batch can mix sizes (VOC); the padding is
    never scored. "input_size" keeps each image's size after the transforms (to crop predictions),
    "size" its file's size.
    """
    height = max(s["image"].shape[-2] for s in batch)
    width = max(s["image"].shape[-1] for s in batch)

    def pad(t: torch.Tensor, value: float) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value)

    out = {
        "image": torch.stack([pad(s["image"], 0.0) for s in batch]),  # (N, 3, H, W)
        "name": [s["name"] for s in batch],
        "path": [s["path"] for s in batch],
        "size": [tuple(s["size"]) for s in batch],
        "input_size": [tuple(s["image"].shape[-2:]) for s in batch],  # after transforms, before padding
    }
    if "mask" in batch[0]:
        out["mask"] = torch.stack([pad(s["mask"], IGNORE_INDEX) for s in batch])  # (N, H, W)
    return out


class SegmentationDataModule(TaskDataModule):
    """Segmentation data: the built-in synthetic shapes, or a real dataset read in its own format.

    Batches: "image" (N, 3, H, W) normalized (evaluation images padded to the largest), "mask" (N, H, W)
    class indices (255 = ignored, also the padding), "name", "path", "size" (file) and "input_size"
    (after the transforms), see `pad_collate`.

    Args:
        dataset: "synthetic" (default, offline), "voc" (Pascal VOC 2012; "train" uses SBD's train_aug
            when present), "cityscapes" (19 train ids), "camvid" (SegNet list files), "ade20k",
            or "folder" (`images/` + `masks/` with index PNGs).
        root: Dataset folder (not needed for synthetic).
        class_names: One name per class index: required for "folder" (it sets the class count), optional
            elsewhere (renames the dataset's classes in the per-class table).
        crop_size: Training crop (height, width).
        scale_range: Random rescaling range for training.
        base_size: Resize every image's longer side to this before anything else (reduced-resolution
            runs; evaluation is then at that resolution), or None for full resolution.
        hflip: Random horizontal flips in training.
        photometric: Random colour jitter in training.
        train_split: Split name for training.
        val_split: Split name for validation.
        test_split: Split name for testing.
        use_sbd: For VOC: train on SBD's train_aug list when it is present.
        synthetic_size: Side of synthetic images.
        limit_samples: Use only the first N samples of each split (quick experiments).
        synthetic_train_size: Synthetic training images.
        synthetic_val_size: Synthetic images of the validation split, and of the test split.
        **kwargs: The options every task shares (`tasks.common.data.TaskDataModule`).
    """

    DATASETS = ("synthetic", "voc", "cityscapes", "camvid", "ade20k", "folder")
    collate = pad_collate

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        class_names: list[str] | None = None,
        crop_size: tuple[int, int] = (128, 128),
        scale_range: tuple[float, float] = (0.75, 1.5),
        base_size: int | None = None,
        hflip: bool = True,
        photometric: bool = True,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        use_sbd: bool = True,
        synthetic_size: int = 128,
        limit_samples: int | None = None,
        synthetic_train_size: int = 96,
        synthetic_val_size: int = 24,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, root, synthetic_train_size, synthetic_val_size, **kwargs)
        if dataset == "folder" and not class_names:
            raise ValueError(
                "dataset 'folder' needs data.class_names, one per class index (masks hold 0..K-1, 255 ignored)"
            )
        if dataset == "synthetic":
            names: Sequence[str] = SYNTHETIC_CLASSES
        elif dataset == "folder":
            names = class_names
        else:
            names = FORMATS[dataset][1].class_names
        if class_names is not None and len(class_names) != len(names):
            raise ValueError(f"class_names has {len(class_names)} names for {len(names)} classes")
        self.class_names = list(class_names or names)

    @property
    def num_classes(self) -> int:
        """Number of classes (known without reading the disk, so the CLI can size the model)."""
        return len(self.class_names)

    def build_split(self, split: str) -> Dataset:
        """The dataset of one split ("train" augmented and cropped, the others at full resolution)."""
        hp = self.hparams
        train = split == "train"
        transform = (
            train_transform(hp.crop_size, hp.scale_range, hp.hflip, hp.photometric, hp.base_size)
            if train
            else eval_transform(hp.base_size)
        )
        if hp.dataset == "synthetic":
            seed = SYNTHETIC_SEEDS[split]
            return SyntheticSegmentationShapes(self.synthetic_length(split), seed, hp.synthetic_size, transform)
        name = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split}[split]
        root = Path(hp.root)
        if hp.dataset == "folder":
            samples, lut = folder_samples(root, name), None
        else:
            lister, spec = FORMATS[hp.dataset]
            options = {"use_sbd": hp.use_sbd} if hp.dataset == "voc" else {}
            samples, lut = lister(root, name, **options), spec.lut
        if hp.limit_samples is not None:
            samples = samples[: hp.limit_samples]
        return SegmentationDataset(samples, self.num_classes, lut, transform)

    def predict_transform(self) -> A.Compose:
        """The evaluation transform (full resolution, or `base_size`)."""
        return eval_transform(self.hparams.base_size)
