"""The depth LightningDataModule: one flat, YAML-friendly switch between the dataset formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from tasks.common.images import read_rgb
from tasks.depth.datasets import (
    NYULabeledDataset,
    RGBDPairDataset,
    SyntheticDepthDataset,
    folder_pairs,
    kitti_dataset,
    list_pairs,
    nyu_png_dataset,
)
from tasks.depth.transforms import DepthTransform

DATASETS = ("synthetic", "rgbd_folder", "rgbd_list", "nyu_mat", "nyu_png", "kitti")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolderDataset(Dataset):
    """Images of a folder (sorted), for `predict`; depth is unknown (all zero)."""

    def __init__(self, root: str | Path, transform: DepthTransform) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"predict folder not found: {root}")
        self.paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in predict folder {root}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = read_rgb(self.paths[index])
        return self.transform(image, np.zeros(image.shape[:2], np.float32), self.paths[index].stem)


class DepthDataModule(LightningDataModule):
    """Data for monocular depth.

    Args:
        dataset: "synthetic" (default: rendered scenes, offline), "rgbd_folder" (colour + 16-bit depth
            PNG pairs in one folder, e.g. 7-Scenes), "rgbd_list" (pairs from list files, e.g. TUM),
            "nyu_mat" (labeled .mat + official splits.mat), "nyu_png" (BTS-style lists, mm PNGs),
            "kitti" (Eigen split lists, uint16 / 256).
        root: Data folder (rgbd_folder), image root (lists, KITTI raw data), or the `.mat` file (nyu_mat).
        depth_root: Depth root of list datasets (KITTI ground truth); default: `root`.
        train_list: List file of the training split (list datasets).
        val_list: List file of the validation / test split (list datasets).
        splits_file: NYU's official `splits.mat` (nyu_mat).
        train_range: [start, stop) of the sorted pairs used for training (rgbd_folder).
        val_range: [start, stop) for validation (rgbd_folder); None = everything after train_range.
        depth_scale: Stored depth units per metre of 16-bit PNGs (rgbd_folder / rgbd_list; 7-Scenes and
            NYU: 1000, TUM: 5000); KITTI always uses 256.
        invalid_values: Stored values meaning "no measurement" besides 0 (7-Scenes: 65535).
        color_suffix: End of colour file names (rgbd_folder).
        depth_suffix: End of depth file names (rgbd_folder).
        image_size: (height, width) the network sees.
        max_scale: Largest zoom of the depth-consistent scale augmentation (1 = off).
        synthetic_train_size: Rendered training scenes.
        synthetic_val_size: Rendered validation scenes (seeded apart from the training ones).
        predict_dir: Folder of images for `predict`; None predicts the validation split.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        depth_root: str | None = None,
        train_list: str | None = None,
        val_list: str | None = None,
        splits_file: str | None = None,
        train_range: tuple[int, int | None] = (0, None),
        val_range: tuple[int, int | None] | None = None,
        depth_scale: float = 1000.0,
        invalid_values: tuple[int, ...] = (0, 65535),
        color_suffix: str = ".color.jpg",
        depth_suffix: str = ".depth.png",
        image_size: tuple[int, int] = (96, 128),
        max_scale: float = 1.25,
        synthetic_train_size: int = 160,
        synthetic_val_size: int = 32,
        predict_dir: str | None = None,
        batch_size: int = 8,
        num_workers: int = 1,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown depth dataset '{dataset}'; choose one of {DATASETS}")
        if dataset != "synthetic" and root is None:
            raise ValueError(f"dataset '{dataset}' needs --data.root")
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.predict_set: Dataset | None = None

    def _build(self, train: bool) -> Dataset:
        hp = self.hparams
        transform = DepthTransform(hp.image_size, train=train, max_scale=hp.max_scale)
        if hp.dataset == "synthetic":
            # Validation scenes are seeded a million apart, so they never repeat a training scene.
            length = hp.synthetic_train_size if train else hp.synthetic_val_size
            h, w = hp.image_size
            return SyntheticDepthDataset(length, seed=0 if train else 1_000_000, height=h, width=w, transform=transform)
        if hp.dataset == "rgbd_folder":
            if train:
                start, stop = hp.train_range
            elif hp.val_range is None:
                if hp.train_range[1] is None:
                    raise ValueError(
                        f"rgbd_folder {hp.root}: the training range takes every frame, so none is left to "
                        f"validate; set --data.train_range [0, N] or --data.val_range [start, stop]"
                    )
                start, stop = hp.train_range[1], None
            else:
                start, stop = hp.val_range
            pairs = folder_pairs(hp.root, hp.color_suffix, hp.depth_suffix, start or 0, stop)
            if not pairs:
                raise ValueError(f"range [{start}, {stop}) of {hp.root} selects no frame")
            return RGBDPairDataset(pairs, hp.depth_scale, hp.invalid_values, transform)
        list_file = hp.train_list if train else hp.val_list
        if hp.dataset != "nyu_mat" and list_file is None:
            raise ValueError(f"dataset '{hp.dataset}' needs --data.{'train' if train else 'val'}_list")
        if hp.dataset == "rgbd_list":
            pairs = list_pairs(list_file, hp.root, hp.depth_root)
            return RGBDPairDataset(pairs, hp.depth_scale, hp.invalid_values, transform)
        if hp.dataset == "nyu_png":
            return nyu_png_dataset(list_file, hp.root, hp.depth_root, transform)
        if hp.dataset == "kitti":
            return kitti_dataset(list_file, hp.root, hp.depth_root or hp.root, transform)
        if hp.splits_file is None:
            raise ValueError("dataset 'nyu_mat' needs --data.splits_file (the official splits.mat)")
        return NYULabeledDataset(hp.root, hp.splits_file, "train" if train else "test", transform)

    def setup(self, stage: str) -> None:
        """Build the datasets a stage needs (all disk access happens here)."""
        if stage == "fit" and self.train_set is None:
            self.train_set = self._build(train=True)
        if stage in ("fit", "validate", "test", "predict") and self.val_set is None:
            self.val_set = self._build(train=False)
        if stage == "predict" and self.hparams.predict_dir is not None:
            self.predict_set = ImageFolderDataset(self.hparams.predict_dir, DepthTransform(self.hparams.image_size))

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=shuffle and len(dataset) > self.hparams.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The validation / test split, in order."""
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """`predict_dir` images, or the validation split."""
        return self._loader(self.predict_set or self.val_set, shuffle=False)
