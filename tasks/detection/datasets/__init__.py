"""Detection datasets: synthetic (default, offline), COCO JSON, Pascal VOC XML."""

from tasks.detection.datasets.coco import CocoDetection, load_coco
from tasks.detection.datasets.common import DetectionDataset, Record, collate
from tasks.detection.datasets.synthetic import SyntheticShapes
from tasks.detection.datasets.voc import VocDetection

__all__ = ["CocoDetection", "DetectionDataset", "Record", "SyntheticShapes", "VocDetection", "collate", "load_coco"]
