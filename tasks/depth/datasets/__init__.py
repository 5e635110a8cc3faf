"""Depth datasets: synthetic (default), generic RGB-D folders / lists, NYU Depth v2, KITTI."""

from tasks.depth.datasets.base import DepthDataset
from tasks.depth.datasets.kitti import kitti_dataset
from tasks.depth.datasets.nyu import NYULabeledDataset, nyu_png_dataset
from tasks.depth.datasets.rgbd_folder import RGBDPairDataset, folder_pairs, list_pairs, read_depth_png
from tasks.depth.datasets.synthetic import SyntheticDepthScenes, render_scene

__all__ = [
    "DepthDataset",
    "NYULabeledDataset",
    "RGBDPairDataset",
    "SyntheticDepthScenes",
    "folder_pairs",
    "kitti_dataset",
    "list_pairs",
    "nyu_png_dataset",
    "read_depth_png",
    "render_scene",
]
