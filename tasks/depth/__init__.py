"""Monocular depth: `python -m tasks.depth fit|validate|test|predict --backbone NAME`."""

from tasks.depth.datamodule import DepthDataModule
from tasks.depth.module import DepthModule

__all__ = ["DepthDataModule", "DepthModule"]
