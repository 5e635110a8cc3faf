"""Drawing detections on an image."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes

from tasks.common.data import denormalize


def draw_detections(
    image: Tensor, detections: dict[str, Tensor], class_names: list[str] | None = None, min_score: float = 0.3
) -> Tensor:
    """Boxes with labels and scores on an image.

    Args:
        image: (3, H, W) uint8, or float normalised with the ImageNet mean / std.
        detections: "boxes" (K, 4) in the image's pixels, "scores" (K,), "labels" (K,).
        class_names: Names by label (index 0 = background), or None to print label numbers.
        min_score: Draw only detections above this score.

    Returns:
        (3, H, W) uint8 image.
    """
    if image.dtype != torch.uint8:
        image = (denormalize(image) * 255).to(torch.uint8)
    keep = detections["scores"] > min_score
    if not keep.any():  # nothing to draw (draw_bounding_boxes would warn)
        return image
    labels = [
        f"{class_names[int(label)] if class_names else int(label)} {float(score):.2f}"
        for label, score in zip(detections["labels"][keep], detections["scores"][keep])
    ]
    return draw_bounding_boxes(image, detections["boxes"][keep].float(), labels=labels, colors="yellow", width=2)
