"""NYU Depth v2 (Silberman et al., "Indoor Segmentation and Support Inference from RGBD Images", ECCV 2012).

Two layouts people have:
- The labeled dataset `nyu_depth_v2_labeled.mat` (MATLAB v7.3 = HDF5: 1449 RGB images and in-painted
  depth in metres, 640x480) with the official split `splits.mat` (`trainNdxs`: 795, `testNdxs`: 654,
  1-based), read by `NYULabeledDataset`.
- Folders of `rgb_XXXXX.jpg` + `sync_depth_XXXXX.png` (16-bit millimetres) listed by BTS-style split
  files (`colour depth focal` per line): `nyu_png_dataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from tasks.depth.datasets.base import DepthDataset
from tasks.depth.datasets.rgbd_folder import RGBDPairDataset, list_pairs

SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}


def read_official_split(splits_path: str | os.PathLike, split: str) -> np.ndarray:
    """0-based image indices of the official NYU split ("train": 795, "test": 654).

    Raises:
        FileNotFoundError: No split file.
        KeyError: The file lacks the split's variable.
    """
    splits_path = Path(splits_path)
    if split not in SPLIT_KEYS:
        raise ValueError(f"unknown NYU split '{split}'; choose one of {sorted(SPLIT_KEYS)}")
    if not splits_path.is_file():
        raise FileNotFoundError(
            f"NYU split file not found: {splits_path} (the official splits.mat with trainNdxs / testNdxs)"
        )
    key = SPLIT_KEYS[split]
    if h5py.is_hdf5(splits_path):
        with h5py.File(splits_path, "r") as f:
            if key not in f:
                raise KeyError(f"{splits_path} has no '{key}' variable")
            indices = np.asarray(f[key])
    else:
        from scipy.io import loadmat  # MATLAB v5 files, as the official splits.mat is

        data = loadmat(splits_path)
        if key not in data:
            raise KeyError(f"{splits_path} has no '{key}' variable (found {sorted(k for k in data if k[0] != '_')})")
        indices = data[key]
    return np.asarray(indices, dtype=np.int64).ravel() - 1


class NYULabeledDataset(DepthDataset):
    """The NYU Depth v2 labeled `.mat` file, one split.

    Args:
        mat_path: `nyu_depth_v2_labeled.mat`.
        splits_path: `splits.mat` (official split).
        split: "train" (795 images) or "test" (654).
        transform: See `DepthDataset`.
    """

    def __init__(
        self, mat_path: str | os.PathLike, splits_path: str | os.PathLike, split: str = "train", transform=None
    ) -> None:
        super().__init__(transform)
        self.mat_path = Path(mat_path)
        if not self.mat_path.is_file():
            raise FileNotFoundError(f"NYU labeled file not found: {self.mat_path}")
        if not h5py.is_hdf5(self.mat_path):
            raise ValueError(f"{self.mat_path} is not a MATLAB v7.3 (HDF5) file like nyu_depth_v2_labeled.mat")
        with h5py.File(self.mat_path, "r") as f:
            for key in ("images", "depths"):
                if key not in f:
                    raise KeyError(f"{self.mat_path} has no '{key}' dataset")
            count = f["images"].shape[0]
        self.indices = read_official_split(splits_path, split)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= count):
            raise ValueError(f"split indices in {splits_path} exceed the {count} images of {self.mat_path}")
        self._file: h5py.File | None = None  # opened lazily: one handle per DataLoader worker

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str, None]:
        """Image and in-painted depth `index` of the split, from the open file."""
        if self._file is None:
            self._file = h5py.File(self.mat_path, "r")
        i = int(self.indices[index])
        # MATLAB stores column-major: (3, W, H) and (W, H) per image.
        image = np.ascontiguousarray(self._file["images"][i].transpose(2, 1, 0))  # (H, W, 3) uint8
        depth = np.ascontiguousarray(self._file["depths"][i].T).astype(np.float32)  # (H, W) metres
        return image, depth, f"nyu_{i:04d}", None


def nyu_png_dataset(
    list_file: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    depth_root: str | os.PathLike | None = None,
    transform=None,
) -> RGBDPairDataset:
    """NYU as folders of JPEG + 16-bit millimetre PNG listed by a BTS-style split file."""
    return RGBDPairDataset(list_pairs(list_file, image_root, depth_root), depth_scale=1000.0, transform=transform)
