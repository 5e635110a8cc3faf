"""Semantic segmentation: DeepLabv3-family heads on any backbone, trained with Lightning.

`python -m tasks.segmentation fit|validate|test|predict [--backbone NAME] [--config configs/segmentation/X.yaml]`
"""

from tasks.segmentation.datamodule import SegmentationDataModule
from tasks.segmentation.module import SegmentationModel

__all__ = ["SegmentationDataModule", "SegmentationModel"]
