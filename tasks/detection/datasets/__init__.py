"""Detection datasets: synthetic (default, offline), COCO JSON, Pascal VOC XML."""

from tasks.detection.datasets.base import DetectionDataset, Record, collate
from tasks.detection.datasets.coco import CocoDetection, load_coco
from tasks.detection.datasets.synthetic import SyntheticDetectionShapes
from tasks.detection.datasets.voc import VocDetection

__all__ = [
    "CocoDetection",
    "DetectionDataset",
    "Record",
    "SyntheticDetectionShapes",
    "VocDetection",
    "collate",
    "load_coco",
]
