"""SSD default boxes ("anchors") for a pyramid of feature maps.

Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016 (https://arxiv.org/abs/1512.02325), section
2.2 "Choosing scales and aspect ratios for default boxes"; the lowest-layer reduction follows the
TensorFlow Object Detection API's `ssd_anchor_generator` (`reduce_boxes_in_lowest_layer`), which the
MobileNetV2 paper's SSDLite uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class DefaultBoxGenerator:
    """Default boxes of SSD: per map k, scale s_k linear in [min_scale, max_scale].

    Every location of map k gets a box of scale s_k for each aspect ratio a (width s_k * sqrt(a),
    height s_k / sqrt(a)), plus one square box of the interpolated scale sqrt(s_k * s_{k+1})
    (s_{K} = 1). With `reduce_lowest`, the first map gets only three boxes, (0.1, 1), (s_0, 2) and
    (s_0, 1/2), as in the TF Object Detection API configuration of SSDLite.

    Args:
        num_levels: Number of feature maps.
        min_scale: Scale of the first map, as a fraction of the image side.
        max_scale: Scale of the last map.
        aspect_ratios: Width / height ratios used at every map.
        reduce_lowest: Use the three-box layout on the first map.
        clip: Clip widths and heights to [0, 1] of the image (torchvision does; TF does not).
    """

    def __init__(
        self,
        num_levels: int = 6,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
        reduce_lowest: bool = True,
        clip: bool = True,
    ) -> None:
        if num_levels < 1:
            raise ValueError(f"num_levels must be at least 1, got {num_levels}")
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale} and {max_scale}")
        if not aspect_ratios or any(a <= 0 for a in aspect_ratios):
            raise ValueError(f"aspect_ratios must be positive, got {tuple(aspect_ratios)}")
        self.num_levels, self.reduce_lowest, self.clip = num_levels, reduce_lowest, clip
        self.aspect_ratios = tuple(float(a) for a in aspect_ratios)
        if num_levels > 1:
            self.scales = [min_scale + (max_scale - min_scale) * k / (num_levels - 1) for k in range(num_levels)]
        else:
            self.scales = [min_scale]
        self.scales.append(1.0)
        self.wh = [self._level_wh(k) for k in range(num_levels)]

    def _level_wh(self, k: int) -> Tensor:
        """(B_k, 2) widths and heights, relative to the image, of the boxes at one location of map k."""
        if k == 0 and self.reduce_lowest:
            pairs = [(0.1, 1.0), (self.scales[0], 2.0), (self.scales[0], 0.5)]
        else:
            pairs = [(self.scales[k], a) for a in self.aspect_ratios]
            pairs.append((math.sqrt(self.scales[k] * self.scales[k + 1]), 1.0))
        wh = [(s * math.sqrt(a), s / math.sqrt(a)) for s, a in pairs]
        return torch.tensor(wh, dtype=torch.float64)

    def num_anchors_per_location(self) -> list[int]:
        """Boxes per feature-map location, per map."""
        return [len(wh) for wh in self.wh]

    def __call__(self, grid_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]) -> Tensor:
        """All default boxes in the order the head emits its predictions.

        Args:
            grid_sizes: (rows, cols) of each feature map, shallow to deep.
            image_size: (H, W) of the network input in pixels.

        Returns:
            (A, 4) boxes (x1, y1, x2, y2) in input pixels, float32; per map row-major over
            locations, then over the boxes of a location.
        """
        if len(grid_sizes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(grid_sizes)}")
        height, width = image_size
        boxes = []
        for (rows, cols), wh in zip(grid_sizes, self.wh):
            cy = (torch.arange(rows, dtype=torch.float64) + 0.5) / rows
            cx = (torch.arange(cols, dtype=torch.float64) + 0.5) / cols
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")
            centers = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # (L, 2)
            wh = wh.clamp(0, 1) if self.clip else wh
            centers = centers[:, None, :].expand(-1, len(wh), 2)  # (L, B, 2)
            sizes = wh[None].expand(len(centers), -1, 2)  # (L, B, 2)
            level = torch.cat([centers - sizes / 2, centers + sizes / 2], dim=2).reshape(-1, 4)
            boxes.append(level)
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        return (torch.cat(boxes) * scale).float()
