"""SSDLite detection on any backbone: `python -m tasks.detection fit|validate|test|predict --backbone NAME`."""

from tasks.detection.datamodule import DetectionDataModule
from tasks.detection.module import DetectionModule

__all__ = ["DetectionDataModule", "DetectionModule"]
