"""Detection data for Lightning: synthetic (default), COCO JSON or Pascal VOC, with SSD augmentation."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from tasks.common.images import read_rgb
from tasks.detection.datasets import CocoDetection, DetectionDataset, SyntheticShapes, VocDetection, collate
from tasks.detection.transforms import eval_transform, train_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolder(Dataset):
    """Unlabelled images of a folder, for `predict`."""

    def __init__(self, folder: str, image_size: int) -> None:
        self.paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in predict folder {folder}")
        self.transform = eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = read_rgb(self.paths[index])
        out = self.transform(image=image, bboxes=[], labels=[])
        return out["image"], {"image_id": index + 1, "orig_size": image.shape[:2], "path": str(self.paths[index])}


class DetectionDataModule(pl.LightningDataModule):
    """Train / val / test / predict loaders of one detection dataset.

    Args:
        dataset: "synthetic" (built in, offline), "coco" or "voc".
        root: Dataset folder. COCO: `annotations/instances_<split>.json` and `<split>/` images. VOC:
            `Annotations/`, `JPEGImages/`, `ImageSets/Main/<split>.txt`.
        train_split: Split used by `fit` (COCO: train2017; VOC: train or trainval).
        val_split: Split validated during `fit` and by `validate`.
        test_split: Split of `test`.
        image_size: Square input side; None for 320 (SSDLite's size) on real data and 192 on the
            synthetic set, so the default `fit` takes minutes on a CPU.
        batch_size: Images per batch.
        num_workers: Loader processes.
        augment: Training augmentation: "ssd" (SSD's photometric distortion, zoom-out, IoU-constrained
            crop, flip; also true), "flip" or "none" (also false); None for "ssd" on real data and "flip"
            on the synthetic set (its objects already vary in size and place; zoom-out would make them tiny).
        classes: VOC class names (None: found in the annotations).
        contiguous_labels: COCO labels 1..K (True) or the category ids themselves (False: 91 outputs).
        skip_corrupt: Skip undecodable images with a warning instead of failing.
        synthetic_train_size: Images of the synthetic training split (640 at batch 8: 80 steps an epoch).
        synthetic_val_size: Images of the synthetic validation / test split.
        predict_dir: Folder of images for `predict` (default: the test split's images).
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        image_size: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: bool | str | None = None,
        classes: list[str] | None = None,
        contiguous_labels: bool = True,
        skip_corrupt: bool = False,
        synthetic_train_size: int = 640,
        synthetic_val_size: int = 64,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        if dataset not in ("synthetic", "coco", "voc"):
            raise ValueError(f"dataset must be 'synthetic', 'coco' or 'voc', got {dataset!r}")
        if dataset != "synthetic" and root is None:
            raise ValueError(f"dataset '{dataset}' needs --data.root (the dataset folder)")
        self.save_hyperparameters()
        self.image_size = image_size or (192 if dataset == "synthetic" else 320)
        self.augment = augment if augment is not None else ("flip" if dataset == "synthetic" else "ssd")
        train_transform(self.image_size, self.augment)  # a bad value fails here, not in setup()
        self.datasets: dict[str, DetectionDataset] = {}
        self.predict_set: Dataset | None = None

    def _build(self, split: str, train: bool) -> DetectionDataset:
        hp = self.hparams
        transform = train_transform(self.image_size, self.augment) if train else eval_transform(self.image_size)
        if hp.dataset == "synthetic":
            size = hp.synthetic_train_size if train else hp.synthetic_val_size
            seed = {"train": 0, "val": 1, "test": 2}.get(split, 3)
            return SyntheticShapes(size, image_size=self.image_size, seed=seed, transform=transform)
        root = Path(hp.root)
        if hp.dataset == "coco":
            return CocoDetection(
                root / split,
                root / "annotations" / f"instances_{split}.json",
                hp.contiguous_labels,
                transform,
                hp.skip_corrupt,
            )
        return VocDetection(root, split, hp.classes, transform, hp.skip_corrupt)

    def setup(self, stage: str) -> None:
        """Read the annotations of the splits the stage needs (all disk I/O happens here)."""
        hp = self.hparams
        wanted = {
            "fit": [("train", hp.train_split, True), ("val", hp.val_split, False)],
            "validate": [("val", hp.val_split, False)],
            "test": [("test", hp.test_split, False)],
            "predict": [] if hp.predict_dir else [("test", hp.test_split, False)],
        }[stage]
        for key, split, train in wanted:
            if key not in self.datasets:
                self.datasets[key] = self._build(split, train)
        if stage == "predict" and hp.predict_dir:
            self.predict_set = ImageFolder(hp.predict_dir, self.image_size)

    @property
    def num_classes(self) -> int | None:
        """Classes including the background, from whichever split is loaded (None before setup / for a folder)."""
        return next(iter(self.datasets.values())).num_classes if self.datasets else None

    @property
    def class_names(self) -> list[str] | None:
        """Class names, index 0 the background (None when no labelled split is loaded)."""
        return next(iter(self.datasets.values())).class_names if self.datasets else None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.hparams.num_workers,
            collate_fn=collate,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training split."""
        return self._loader(self.datasets["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation split, in order."""
        return self._loader(self.datasets["val"], shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test split, in order."""
        return self._loader(self.datasets["test"], shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The predict folder's images, or the test split."""
        return self._loader(self.predict_set or self.datasets["test"], shuffle=False)
