"""SSDLite: SSD with depthwise-separable extra layers and predictors, for any backbone.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018, section 6.2
(https://arxiv.org/abs/1801.04381); SSD: Liu et al., ECCV 2016 (https://arxiv.org/abs/1512.02325).

The head is sized from a `FeatureInfo` only. It takes the backbone maps it is given (the paper taps
MobileNetV2's stride-16 expansion layer and its 1280-channel last layer), grows the pyramid with
extra blocks (1x1 -> depthwise 3x3 stride 2 -> 1x1) to `len(feature_info) + len(extra_channels)`
maps, and predicts per default box 4 offsets and C class logits with depthwise-separable
predictors (depthwise 3x3 + BN + ReLU6, then 1x1). `forward` is the same in training and
evaluation: raw `(N, A, 4)` offsets and `(N, A, C)` logits. Default boxes, box coding and
post-processing are separate (`default_boxes`, `heads.box_coder`, `postprocess`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from backbones import FeatureInfo
from heads._layers import conv_bn_act
from heads.anchors import DefaultBoxGenerator
from heads.box_coder import decode_boxes


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int, norm: partial) -> nn.Sequential:
    return conv_bn_act(cin, cout, kernel, stride=stride, groups=groups, norm=norm, activation=nn.ReLU6)


def extra_block(in_channels: int, out_channels: int, norm: partial) -> nn.Sequential:
    """SSDLite extra layer: 1x1 to half width, depthwise 3x3 stride 2, 1x1 to `out_channels` (all BN + ReLU6)."""
    mid = out_channels // 2
    return nn.Sequential(
        _conv_bn_relu6(in_channels, mid, 1, 1, 1, norm),
        _conv_bn_relu6(mid, mid, 3, 2, mid, norm),
        _conv_bn_relu6(mid, out_channels, 1, 1, 1, norm),
    )


def prediction_block(in_channels: int, out_channels: int, kernel: int, norm: partial) -> nn.Sequential:
    """Depthwise-separable predictor: depthwise `kernel` x `kernel` + BN + ReLU6, then a 1x1 conv with bias."""
    return nn.Sequential(
        _conv_bn_relu6(in_channels, in_channels, kernel, 1, in_channels, norm),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class SSDLiteHead(nn.Module):
    """SSDLite extra layers, default boxes and box / class predictors.

    Args:
        feature_info: The maps the head receives, shallow to deep (e.g. the backbone's stride-16
            and stride-32 taps).
        num_classes: Classes including background (91 for the COCO label map of the papers).
        extra_channels: Output channels of the extra blocks, each halving the resolution.
        min_scale: Default-box scale of the first map.
        max_scale: Default-box scale of the last map.
        aspect_ratios: Default-box aspect ratios at every map.
        reduce_lowest: Three default boxes on the first map (TF / paper) instead of the full set
            (torchvision).
        clip_default_boxes: Clip default-box sizes to the image (torchvision) or not.
        kernel_size: Depthwise kernel of the predictors.
        bn_eps: Batch-norm epsilon (TF and torchvision SSDLite: 1e-3).
        bn_momentum: Batch-norm momentum (0.03, i.e. TF's decay 0.97).
        init_std: Std of the normal init of the head's convolutions (0.03, as TF and torchvision).
        prior_prob: If set, the class bias starts at the logit of this probability (RetinaNet's prior,
            useful with focal loss); else 0.
    """

    def __init__(
        self,
        feature_info: FeatureInfo,
        num_classes: int,
        *,
        extra_channels: Sequence[int] = (512, 256, 256, 128),
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
        reduce_lowest: bool = True,
        clip_default_boxes: bool = True,
        kernel_size: int = 3,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.03,
        init_std: float = 0.03,
        prior_prob: float | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background, so it must be at least 2, got {num_classes}")
        self.feature_info, self.num_classes = feature_info, num_classes
        self.num_inputs = len(feature_info)
        norm = partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)
        channels = list(feature_info.channels)
        self.extras = nn.ModuleList()
        for out_channels in extra_channels:
            self.extras.append(extra_block(channels[-1], out_channels, norm))
            channels.append(out_channels)
        self.level_channels = tuple(channels)
        self.anchor_generator = DefaultBoxGenerator(
            num_levels=len(channels),
            min_scale=min_scale,
            max_scale=max_scale,
            aspect_ratios=aspect_ratios,
            reduce_lowest=reduce_lowest,
            clip=clip_default_boxes,
        )
        anchors = self.anchor_generator.num_anchors_per_location()
        self.box_predictors = nn.ModuleList(
            prediction_block(c, 4 * a, kernel_size, norm) for c, a in zip(channels, anchors)
        )
        self.class_predictors = nn.ModuleList(
            prediction_block(c, num_classes * a, kernel_size, norm) for c, a in zip(channels, anchors)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if prior_prob is not None:
            for predictor in self.class_predictors:
                nn.init.constant_(predictor[-1].bias, -math.log((1 - prior_prob) / prior_prob))
        self._box_cache: dict[tuple, Tensor] = {}

    def num_anchors_per_location(self) -> list[int]:
        """Default boxes per location of each map (torchvision's name)."""
        return self.anchor_generator.num_anchors_per_location()

    def grid_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(rows, cols) of every map for an input of `image_size` (H, W).

        Backbone maps have ceil(H / stride) rows (the backbone contract); each extra block (3x3,
        stride 2, padding 1) halves with rounding up.
        """
        height, width = image_size
        sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in self.feature_info.strides]
        for _ in self.extras:
            rows, cols = sizes[-1]
            sizes.append((math.ceil(rows / 2), math.ceil(cols / 2)))
        return sizes

    def default_boxes(self, image_size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
        """(A, 4) default boxes (x1, y1, x2, y2) in input pixels, in the order of `forward`'s outputs."""
        key = (int(image_size[0]), int(image_size[1]), str(device))
        if key not in self._box_cache:
            boxes = self.anchor_generator(self.grid_sizes(image_size), image_size)
            self._box_cache[key] = boxes.to(device)
        return self._box_cache[key]

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Predict box offsets and class logits for every default box.

        Args:
            features: The maps described by `feature_info`, each (N, C_i, H_i, W_i).

        Returns:
            Box offsets (N, A, 4) relative to `default_boxes` and class logits (N, A, num_classes).
        """
        if len(features) != self.num_inputs:
            raise ValueError(f"SSDLiteHead was built for {self.num_inputs} feature maps, got {len(features)}")
        maps = list(features)
        x = maps[-1]
        for block in self.extras:
            x = block(x)  # (N, C_k, ceil(H/2), ceil(W/2))
            maps.append(x)
        n = maps[0].shape[0]
        boxes, logits = [], []
        for x, box_pred, cls_pred in zip(maps, self.box_predictors, self.class_predictors):
            # (N, B*4, H, W) -> (N, H, W, B*4) -> (N, H*W*B, 4): location-major, then box, as default_boxes.
            boxes.append(box_pred(x).permute(0, 2, 3, 1).reshape(n, -1, 4))
            logits.append(cls_pred(x).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes))
        return torch.cat(boxes, dim=1), torch.cat(logits, dim=1)  # (N, A, 4), (N, A, C)


DETECTION_HEADS = {"ssdlite": SSDLiteHead}


def create_detection_head(name: str, feature_info: FeatureInfo, num_classes: int, **kwargs) -> nn.Module:
    """Build a detection head by name (today "ssdlite").

    Args:
        name: One of `DETECTION_HEADS`.
        feature_info: The maps the head receives (SSDLite: the backbone's stride-16 and stride-32 taps).
        num_classes: Classes including the background.
        **kwargs: The head's options (see `SSDLiteHead`).

    Returns:
        The head; `head(features)` gives (N, A, 4) box offsets and (N, A, num_classes) logits.

    Raises:
        ValueError: Unknown head name.
    """
    if name not in DETECTION_HEADS:
        raise ValueError(f"unknown detection head '{name}'; choose one of {', '.join(DETECTION_HEADS)}")
    return DETECTION_HEADS[name](feature_info, num_classes, **kwargs)


@torch.no_grad()
def postprocess(
    box_regression: Tensor,
    cls_logits: Tensor,
    default_boxes: Tensor,
    image_size: tuple[int, int],
    *,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.55,
    topk_candidates: int = 300,
    detections_per_img: int = 300,
    activation: str = "softmax",
    weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
) -> list[dict[str, Tensor]]:
    """Decode, threshold, keep the top-k per class, per-class NMS, keep the best per image.

    As torchvision's `SSD.postprocess_detections`, with one batched top-k instead of its per-class loop.

    Args:
        box_regression: (N, A, 4) offsets from the head.
        cls_logits: (N, A, C) logits; class 0 is the background.
        default_boxes: (A, 4) default boxes in input pixels.
        image_size: (H, W) of the network input; boxes are clipped to it.
        score_thresh: Drop scores at or below this.
        nms_thresh: IoU of per-class non-maximum suppression.
        topk_candidates: Most candidates per class kept before NMS.
        detections_per_img: Most detections kept per image.
        activation: "softmax" (cross-entropy training) or "sigmoid" (focal loss training).
        weights: Box-coding weights.

    Returns:
        Per image a dict with "boxes" (K, 4) x1y1x2y2 in input pixels, "scores" (K,) and "labels"
        (K,) in 1..C-1, sorted by decreasing score.
    """
    if activation == "softmax":
        scores = cls_logits.softmax(dim=-1)[..., 1:]  # (N, A, C-1)
    elif activation == "sigmoid":
        scores = cls_logits.sigmoid()[..., 1:]
    else:
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    boxes = clip_boxes_to_image(decode_boxes(box_regression, default_boxes, weights), image_size)  # (N, A, 4)
    num_fg = scores.shape[-1]
    k = min(topk_candidates, scores.shape[1])
    # Per class, the k best default boxes in one batched top-k: (N, C-1, k), then the threshold.
    top_scores, top_idx = scores.transpose(1, 2).topk(k, dim=2)
    labels_all = torch.arange(1, num_fg + 1, device=scores.device).view(1, -1, 1).expand_as(top_idx)
    results = []
    for image_boxes, image_scores, image_idx, image_labels in zip(boxes, top_scores, top_idx, labels_all):
        keep = image_scores > score_thresh  # (C-1, k)
        cand_scores, cand_labels = image_scores[keep], image_labels[keep]
        cand_boxes = image_boxes[image_idx[keep]]
        kept = batched_nms(cand_boxes, cand_scores, cand_labels, nms_thresh)[:detections_per_img]
        results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": cand_labels[kept]})
    return results
