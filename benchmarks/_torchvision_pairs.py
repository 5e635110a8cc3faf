"""What the benchmarks share to time ours against torchvision's models of the same architecture.

- `TorchvisionSegmentationNetwork`, `TorchvisionSSDNetwork`: torchvision's models as plain networks with our
  output convention (logits; box offsets and class logits), so both sides are timed on the same tensors.
- `ours_ssdlite_in_torchvision_config`: our SSDLite built as torchvision's ssdlite320_mobilenet_v3_large
  (the layout `tasks.detection.torchvision_weights.load_torchvision_ssdlite` copies its weights into).
- `recalibrate_batch_norm`: activation ranges of a trained network for randomly initialised ones.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

# torchvision's ssdlite320_mobilenet_v3_large in our DetectionModule's options (configs/detection/
# coco_ssdlite_mobilenet_v3_large.yaml): the reduced tail, the full box set on the first map, 91 classes.
TORCHVISION_SSDLITE_CONFIG = {
    "backbone": "mobilenet_v3_large",
    "backbone_kwargs": {"reduced_tail": True},
    "num_classes": 91,
    "reduce_lowest": False,
    "clip_default_boxes": True,
}


class TorchvisionSegmentationNetwork(nn.Module):
    """torchvision's segmentation models return {"out": logits}; the network part is the tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) normalized -> (N, K, H, W) logits."""
        return self.model(x)["out"]


class TorchvisionSSDNetwork(nn.Module):
    """torchvision's SSDLite without its transform and post-processing: backbone + head outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) normalized -> box offsets (N, A, 4), class logits (N, A, C)."""
        out = self.head(list(self.backbone(x).values()))
        return out["bbox_regression"], out["cls_logits"]


def ours_ssdlite_in_torchvision_config(**kwargs) -> nn.Module:
    """Our DetectionModule in `TORCHVISION_SSDLITE_CONFIG`, with `kwargs` (post-processing thresholds) on top.

    Random weights; `load_torchvision_ssdlite(module, torchvision_model.state_dict())` gives it torchvision's.
    """
    from tasks.detection.module import DetectionModule

    return DetectionModule(**TORCHVISION_SSDLITE_CONFIG, **kwargs)


def recalibrate_batch_norm(network: nn.Module, images: np.ndarray) -> None:
    """Set every batch norm's running statistics to those of `network` on `images` (uint8 RGB, N x 3 x H x W).

    A randomly initialised network in eval mode uses mean 0 / variance 1 statistics, under which torchvision's
    MobileNetV3 activations shrink block after block (its SSDLite head sees features of about 1e-14, so every
    class score is the same, and top-k / NMS run on ties); with statistics measured on real images the
    activations have the ranges a trained network has. Weights are unchanged.
    """
    from tasks.common.data import IMAGENET_MEAN, IMAGENET_STD

    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).float() / 255.0 - mean) / std
    network.train()
    with torch.no_grad():
        for batch in x.split(4):
            network(batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    network.eval()
