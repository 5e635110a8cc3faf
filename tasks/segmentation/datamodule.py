"""LightningDataModule for semantic segmentation: synthetic by default, real formats by name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from tasks.segmentation.datasets import (
    IGNORE_INDEX,
    LISTERS,
    SPECS,
    SYNTHETIC_CLASSES,
    Sample,
    SegmentationDataset,
    SyntheticShapes,
    folder_samples,
    list_images,
)
from tasks.segmentation.transforms import eval_transform, train_transform

DATASETS = ("synthetic", "voc", "cityscapes", "camvid", "ade20k", "folder")


def pad_collate(batch: list[dict]) -> dict:
    """Stack samples of different sizes: images padded with 0 and masks with the ignore index, bottom-right.

    Evaluation runs at each image's own resolution, so a batch can mix sizes (VOC); the padding is
    never scored, and `size` keeps each image's size for cropping predictions.
    """
    height = max(s["image"].shape[-2] for s in batch)
    width = max(s["image"].shape[-1] for s in batch)

    def pad(t: torch.Tensor, value: float) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value)

    out = {
        "image": torch.stack([pad(s["image"], 0.0) for s in batch]),  # (N, 3, H, W)
        "path": [s["path"] for s in batch],
        "size": [tuple(s["image"].shape[-2:]) for s in batch],  # after transforms, before padding
        "original_size": [s["size"] for s in batch],
    }
    if "mask" in batch[0]:
        out["mask"] = torch.stack([pad(s["mask"], IGNORE_INDEX) for s in batch])  # (N, H, W)
    return out


class SegmentationDataModule(LightningDataModule):
    """Segmentation data: the built-in synthetic shapes, or a real dataset read in its own format.

    Args:
        dataset: "synthetic" (default, offline), "voc" (Pascal VOC 2012; "train" uses SBD's train_aug
            when present), "cityscapes" (19 train ids), "camvid" (SegNet list files), "ade20k",
            or "folder" (`images/` + `masks/` with index PNGs).
        root: Dataset folder (not needed for synthetic).
        class_names: One name per class index: required for "folder" (it sets the class count), optional
            elsewhere (renames the dataset's classes in the per-class table).
        batch_size: Training batch size (evaluation uses `eval_batch_size`).
        eval_batch_size: Validation / test / predict batch size; images of a batch are padded to one size.
        num_workers: DataLoader workers.
        crop_size: Training crop (height, width).
        scale_range: Random rescaling range for training.
        base_size: Resize every image's longer side to this before anything else (reduced-resolution
            runs; evaluation is then at that resolution), or None for full resolution.
        hflip: Random horizontal flips in training.
        photometric: Random colour jitter in training.
        train_split: Split name for training.
        val_split: Split name for validation.
        test_split: Split name for testing.
        predict_dir: Folder of images for `predict`.
        predict_output_dir: Where `predict` writes one palette PNG mask per image.
        use_sbd: For VOC: train on SBD's train_aug list when it is present.
        synthetic_size: Side of synthetic images.
        synthetic_train: Number of synthetic training images.
        synthetic_val: Number of synthetic validation images.
        limit_samples: Use only the first N samples of each split (quick experiments).
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        class_names: list[str] | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        crop_size: tuple[int, int] = (128, 128),
        scale_range: tuple[float, float] = (0.75, 1.5),
        base_size: int | None = None,
        hflip: bool = True,
        photometric: bool = True,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        predict_dir: str | None = None,
        predict_output_dir: str = "predictions/segmentation",
        use_sbd: bool = True,
        synthetic_size: int = 128,
        synthetic_train: int = 96,
        synthetic_val: int = 24,
        limit_samples: int | None = None,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown segmentation dataset '{dataset}'; choose one of {', '.join(DATASETS)}")
        if dataset not in ("synthetic",) and root is None:
            raise ValueError(f"dataset '{dataset}' needs data.root (the folder that holds it)")
        if dataset == "folder" and not class_names:
            raise ValueError(
                "dataset 'folder' needs data.class_names, one per class index (masks hold 0..K-1, 255 ignored)"
            )
        self.dataset_name = dataset
        self.root = Path(root) if root is not None else None
        if dataset == "synthetic":
            names: Sequence[str] = SYNTHETIC_CLASSES
        elif dataset == "folder":
            names = class_names
        else:
            names = SPECS[dataset].class_names
        if class_names is not None and len(class_names) != len(names):
            raise ValueError(f"class_names has {len(class_names)} names for {len(names)} classes")
        self.class_names = list(class_names or names)
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

    @property
    def num_classes(self) -> int:
        """Number of classes (known without reading the disk, so the CLI can size the model)."""
        return len(self.class_names)

    def _split(self, split: str, train: bool) -> Dataset:
        hp = self.hparams
        transform = (
            train_transform(hp.crop_size, hp.scale_range, hp.hflip, hp.photometric, hp.base_size)
            if train
            else eval_transform(hp.base_size)
        )
        if self.dataset_name == "synthetic":
            length = hp.synthetic_train if train else hp.synthetic_val
            seed = {"train": 1, "val": 2, "test": 3}.get(split, 4)
            return SyntheticShapes(length, seed, hp.synthetic_size, transform)
        if self.dataset_name == "folder":
            samples, lut = folder_samples(self.root, split), None
        elif self.dataset_name == "voc":
            samples, lut = LISTERS["voc"](self.root, split, use_sbd=hp.use_sbd), SPECS["voc"].lut
        else:
            samples, lut = LISTERS[self.dataset_name](self.root, split), SPECS[self.dataset_name].lut
        if hp.limit_samples is not None:
            samples = samples[: hp.limit_samples]
        return SegmentationDataset(samples, self.num_classes, lut, transform)

    def setup(self, stage: str | None = None) -> None:
        """List (and check) the files of the splits the stage needs."""
        hp = self.hparams
        if stage in ("fit", None):
            self.datasets["train"] = self._split(hp.train_split, train=True)
        if stage in ("fit", "validate", None):
            self.datasets["val"] = self._split(hp.val_split, train=False)
        if stage in ("test", None):
            self.datasets["test"] = self._split(hp.test_split, train=False)
        if stage == "predict":
            if hp.predict_dir is None:
                raise ValueError("predict needs data.predict_dir, a folder of images")
            samples = [Sample(p) for p in list_images(Path(hp.predict_dir))]
            if not samples:
                raise ValueError(f"no images ({', '.join(('.jpg', '.png', '...'))}) in {hp.predict_dir}")
            self.datasets["predict"] = SegmentationDataset(
                samples, self.num_classes, None, eval_transform(hp.base_size)
            )

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=pad_collate,
            # A last batch of one image would give BatchNorm a single sample; drop it when there are more.
            drop_last=shuffle and len(dataset) > batch_size,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training crops."""
        return self._loader("train", True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        """Validation images at full (or `base_size`) resolution."""
        return self._loader("val", False, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test images at full (or `base_size`) resolution."""
        return self._loader("test", False, self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """Images of `predict_dir`."""
        return self._loader("predict", False, self.hparams.eval_batch_size)
