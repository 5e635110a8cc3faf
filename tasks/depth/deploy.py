"""Depth's deployable graph and its onnxruntime evaluator.

Graph outputs: "depth" (N, 1, H, W) metres at the input size (models trained with output="metric"), or
"inverse_depth" (N, 1, H, W), relative, for output="inverse" models (as the PyTorch module returns them).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tasks.common.deploy.onnx_export import TaskDeployment
from tasks.common.deploy.runtime import OnnxEvaluation
from tasks.depth.datamodule import DepthDataModule
from tasks.depth.module import DepthModule


class DepthOutputs(nn.Module):
    """The network's (N, 1, H, W) map as is, named for what it holds."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.output_names = (name,)

    def forward(self, raw: Tensor, images: Tensor) -> tuple[Tensor]:
        """(N, 1, H, W) -> ((N, 1, H, W),)."""
        return (raw,)


class OnnxDepthModule(OnnxEvaluation, DepthModule):
    """`DepthModule` whose network is an exported file run by onnxruntime (same loss, metrics, predictions)."""

    def onnx_forward(self, outputs: dict[str, Tensor]) -> Tensor:
        """The (N, 1, H, W) map, as `DepthModule.forward` returns it."""
        return outputs["inverse_depth" if self.hparams.output == "inverse" else "depth"]


class DepthDeployment(TaskDeployment):
    """Depth: dynamic batch, height and width."""

    task = "depth"
    module_class = DepthModule
    onnx_module_class = OnnxDepthModule

    def outputs(self, module: DepthModule, *, raw: bool, image_size: tuple[int, int]) -> nn.Module:
        """The depth map (the same with or without `raw`)."""
        return DepthOutputs("inverse_depth" if module.hparams.output == "inverse" else "depth")

    def example_size(self, datamodule: DepthDataModule) -> tuple[int, int]:
        """The data's `image_size`."""
        return tuple(int(s) for s in datamodule.hparams.image_size)

    def describe_outputs(self, module: Any) -> dict[str, str]:
        """What each output holds."""
        if module.hparams.output == "inverse":
            return {"inverse_depth": "float32 relative inverse depth at the input size"}
        return {"depth": f"float32 depth in metres (0, {module.hparams.max_depth}) at the input size"}


DEPLOYMENT = DepthDeployment()
