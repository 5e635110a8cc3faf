"""Segmentation's deployable graph and its onnxruntime evaluator.

Graph outputs: "logits" (N, K, H, W) float32 and "classes" (N, H, W) uint8 (int64 beyond 256 classes), the
argmax class map, both at the input size; `--raw` exports the logits alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tasks.common.deploy.onnx_export import TaskDeployment
from tasks.common.deploy.runtime import OnnxEvaluation
from tasks.segmentation.datamodule import SegmentationDataModule
from tasks.segmentation.module import SegmentationModule


class SegmentationOutputs(nn.Module):
    """Logits (and the class map, unless `raw`) at the input size.

    Args:
        num_classes: K.
        raw: Logits only.
    """

    def __init__(self, num_classes: int, raw: bool = False) -> None:
        super().__init__()
        self.raw = raw
        self.class_dtype = torch.uint8 if num_classes <= 256 else torch.int64
        self.output_names = ("logits",) if raw else ("logits", "classes")

    def forward(self, logits: Tensor, images: Tensor) -> tuple[Tensor, ...]:
        """(N, K, H, W) -> logits (N, K, H, W) [, classes (N, H, W)]."""
        if self.raw:
            return (logits,)
        return logits, logits.argmax(dim=1).to(self.class_dtype)


class OnnxSegmentationModule(OnnxEvaluation, SegmentationModule):
    """`SegmentationModule` whose network is an exported file run by onnxruntime (same loss, mIoU, masks)."""

    def onnx_forward(self, outputs: dict[str, Tensor]) -> Tensor:
        """The (N, K, H, W) logits, as `SegmentationModule.forward` returns them."""
        return outputs["logits"]


class SegmentationDeployment(TaskDeployment):
    """Segmentation: dynamic batch, height and width."""

    task = "segmentation"
    module_class = SegmentationModule
    onnx_module_class = OnnxSegmentationModule

    def outputs(self, module: SegmentationModule, *, raw: bool, image_size: tuple[int, int]) -> nn.Module:
        """Logits and class map."""
        return SegmentationOutputs(module.hparams.num_classes, raw)

    def example_size(self, datamodule: SegmentationDataModule) -> tuple[int, int]:
        """The training crop (evaluation images may have any size: the graph is dynamic)."""
        return tuple(int(s) for s in datamodule.hparams.crop_size)

    def describe_outputs(self, module: Any) -> dict[str, str]:
        """What each output holds."""
        k = module.hparams.num_classes
        return {
            "logits": f"float32 class scores (N, {k}, H, W) at the input size",
            "classes": f"argmax class index (N, H, W) at the input size, 0..{k - 1}",
        }


DEPLOYMENT = SegmentationDeployment()
