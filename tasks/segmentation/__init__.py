"""Semantic segmentation: `python -m tasks.segmentation fit|validate|test|predict --backbone NAME`."""

from tasks.segmentation.datamodule import SegmentationDataModule
from tasks.segmentation.module import SegmentationModule

__all__ = ["SegmentationDataModule", "SegmentationModule"]
