"""The depth LightningDataModule: one flat, YAML-friendly switch between the dataset formats."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch.utils.data import Dataset

from tasks.common.data import TaskDataModule, stack_batch
from tasks.depth.datasets import (
    NYULabeledDataset,
    RGBDPairDataset,
    SyntheticDepthScenes,
    folder_pairs,
    kitti_dataset,
    list_pairs,
    nyu_png_dataset,
)
from tasks.depth.transforms import DepthTransform, eval_transform, train_transform

# Synthetic splits are seeded a million scenes apart, so no split repeats another's scene.
SYNTHETIC_SEEDS = {"train": 0, "val": 1_000_000, "test": 2_000_000}


class DepthDataModule(TaskDataModule):
    """Data for monocular depth.

    Batches: "image" (N, 3, H, W) normalized, "depth" (N, 1, H, W) metres (0 = no measurement), "name",
    "path" and "size" (lists, see `DepthDataset`).

    Args:
        dataset: "synthetic" (default: rendered scenes, offline), "rgbd_folder" (colour + 16-bit depth
            PNG pairs in one folder, e.g. 7-Scenes), "rgbd_list" (pairs from list files, e.g. TUM),
            "nyu_mat" (labeled .mat + official splits.mat), "nyu_png" (BTS-style lists, mm PNGs),
            "kitti" (Eigen split lists, uint16 / 256).
        root: Data folder (rgbd_folder), image root (lists, KITTI raw data), or the `.mat` file (nyu_mat).
        depth_root: Depth root of list datasets (KITTI ground truth); default: `root`.
        train_list: List file of the training split (list datasets).
        val_list: List file of the validation split (list datasets).
        test_list: List file of the test split (list datasets); None for `val_list`.
        splits_file: NYU's official `splits.mat` (nyu_mat; validation and test are its test split).
        train_range: [start, stop) of the sorted pairs used for training (rgbd_folder).
        val_range: [start, stop) for validation (rgbd_folder); None = everything after train_range.
        test_range: [start, stop) for testing (rgbd_folder); None for the validation range.
        depth_scale: Stored depth units per metre of 16-bit PNGs (rgbd_folder / rgbd_list; 7-Scenes and
            NYU: 1000, TUM: 5000); KITTI always uses 256.
        invalid_values: Stored values meaning "no measurement" besides 0 (7-Scenes: 65535).
        color_suffix: End of colour file names (rgbd_folder).
        depth_suffix: End of depth file names (rgbd_folder).
        image_size: (height, width) the network sees (synthetic scenes are rendered at it).
        max_scale: Largest zoom of the depth-consistent scale augmentation (1 = off).
        synthetic_train_size: Rendered training scenes.
        synthetic_val_size: Rendered scenes of the validation split, and of the test split.
        **kwargs: The options every task shares (`tasks.common.data.TaskDataModule`).
    """

    DATASETS = ("synthetic", "rgbd_folder", "rgbd_list", "nyu_mat", "nyu_png", "kitti")
    collate = partial(stack_batch, keys=("image", "depth"))

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        depth_root: str | None = None,
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        splits_file: str | None = None,
        train_range: tuple[int, int | None] = (0, None),
        val_range: tuple[int, int | None] | None = None,
        test_range: tuple[int, int | None] | None = None,
        depth_scale: float = 1000.0,
        invalid_values: tuple[int, ...] = (0, 65535),
        color_suffix: str = ".color.jpg",
        depth_suffix: str = ".depth.png",
        image_size: tuple[int, int] = (96, 128),
        max_scale: float = 1.25,
        synthetic_train_size: int = 160,
        synthetic_val_size: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, root, synthetic_train_size, synthetic_val_size, **kwargs)

    def _range(self, split: str) -> tuple[int, int | None]:
        hp = self.hparams
        if split == "train":
            return hp.train_range
        chosen = hp.test_range if split == "test" else None
        chosen = chosen if chosen is not None else hp.val_range
        if chosen is not None:
            return chosen
        if hp.train_range[1] is None:
            raise ValueError(
                f"rgbd_folder {hp.root}: the training range takes every frame, so none is left to "
                f"validate; set --data.train_range [0, N] or --data.val_range [start, stop]"
            )
        return hp.train_range[1], None

    def build_split(self, split: str) -> Dataset:
        """The dataset of one split ("train" augmented)."""
        hp = self.hparams
        train = split == "train"
        transform = train_transform(hp.image_size, hp.max_scale) if train else eval_transform(hp.image_size)
        if hp.dataset == "synthetic":
            seed, (height, width) = SYNTHETIC_SEEDS[split], hp.image_size
            return SyntheticDepthScenes(self.synthetic_length(split), seed, height, width, transform=transform)
        if hp.dataset == "rgbd_folder":
            start, stop = self._range(split)
            pairs = folder_pairs(hp.root, hp.color_suffix, hp.depth_suffix, start or 0, stop)
            if not pairs:
                raise ValueError(f"range [{start}, {stop}) of {hp.root} selects no frame")
            return RGBDPairDataset(pairs, hp.depth_scale, hp.invalid_values, transform)
        if hp.dataset == "nyu_mat":
            if hp.splits_file is None:
                raise ValueError("dataset 'nyu_mat' needs --data.splits_file (the official splits.mat)")
            return NYULabeledDataset(hp.root, hp.splits_file, "train" if train else "test", transform)
        list_file = {"train": hp.train_list, "val": hp.val_list, "test": hp.test_list or hp.val_list}[split]
        if list_file is None:
            raise ValueError(f"dataset '{hp.dataset}' needs --data.{'train' if train else 'val'}_list")
        if hp.dataset == "rgbd_list":
            return RGBDPairDataset(
                list_pairs(list_file, hp.root, hp.depth_root), hp.depth_scale, hp.invalid_values, transform
            )
        if hp.dataset == "nyu_png":
            return nyu_png_dataset(list_file, hp.root, hp.depth_root, transform)
        return kitti_dataset(list_file, hp.root, hp.depth_root or hp.root, transform)

    def predict_transform(self) -> DepthTransform:
        """Resize and normalize (no depth)."""
        return eval_transform(self.hparams.image_size)
