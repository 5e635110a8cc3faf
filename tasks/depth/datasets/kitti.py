"""KITTI depth (Uhrig et al., "Sparsity Invariant CNNs", 3DV 2017) on the Eigen split.

Ground truth is a 16-bit PNG per frame, metres = value / 256, 0 = no LiDAR point. Frames are listed
by BTS's Eigen split files (`eigen_train_files_with_gt.txt`, `eigen_test_files_with_gt.txt`): one
`image depth focal` line per frame, relative to the raw-data and ground-truth roots; frames whose
depth is "None" have no ground truth and are skipped.
"""

from __future__ import annotations

import os

from tasks.depth.datasets.rgbd_folder import RGBDPairDataset, list_pairs

KITTI_DEPTH_SCALE = 256.0


def kitti_dataset(
    list_file: str | os.PathLike,
    image_root: str | os.PathLike,
    depth_root: str | os.PathLike,
    transform=None,
) -> RGBDPairDataset:
    """KITTI frames of an Eigen split file with their uint16 / 256 ground truth."""
    return RGBDPairDataset(list_pairs(list_file, image_root, depth_root), KITTI_DEPTH_SCALE, transform=transform)
