"""Segmentation datasets: synthetic, Pascal VOC 2012 (+SBD), Cityscapes, CamVid, ADE20K, folders."""

from tasks.segmentation.datasets.base import IGNORE_INDEX, Sample, SegmentationDataset
from tasks.segmentation.datasets.formats import LISTERS, SPECS, DatasetSpec, folder_samples, list_images
from tasks.segmentation.datasets.synthetic import SYNTHETIC_CLASSES, SyntheticShapes

__all__ = [
    "IGNORE_INDEX",
    "LISTERS",
    "SPECS",
    "SYNTHETIC_CLASSES",
    "DatasetSpec",
    "Sample",
    "SegmentationDataset",
    "SyntheticShapes",
    "folder_samples",
    "list_images",
]
