"""Segmentation datasets: synthetic, Pascal VOC 2012 (+SBD), Cityscapes, CamVid, ADE20K, folders.

`FORMATS` maps each real dataset name to its lister (`root, split -> [Sample]`) and its `DatasetSpec`
(class names, raw-value lookup table); "folder" has no spec (its classes are given by name).
"""

from tasks.segmentation.datasets import ade20k, camvid, cityscapes, voc
from tasks.segmentation.datasets.base import IGNORE_INDEX, DatasetSpec, Sample, SegmentationDataset
from tasks.segmentation.datasets.folder import folder_samples
from tasks.segmentation.datasets.synthetic import SYNTHETIC_CLASSES, SyntheticSegmentationShapes

FORMATS = {
    "voc": (voc.voc_samples, voc.SPEC),
    "cityscapes": (cityscapes.cityscapes_samples, cityscapes.SPEC),
    "camvid": (camvid.camvid_samples, camvid.SPEC),
    "ade20k": (ade20k.ade20k_samples, ade20k.SPEC),
}

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "SYNTHETIC_CLASSES",
    "DatasetSpec",
    "Sample",
    "SegmentationDataset",
    "SyntheticSegmentationShapes",
    "folder_samples",
]
