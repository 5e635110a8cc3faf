"""The deployable graph: uint8 RGB images in, normalization inside, the task's outputs out.

`DeployableModel(network, outputs)` is a plain `nn.Module` (no Lightning, no data code), so
`torch.onnx.export`, `torch.export` and converters built on it (litert-torch) trace it as is:

    images (N, 3, H, W) uint8 RGB, 0..255
      -> float, (x / 255 - ImageNet mean) / ImageNet std      (`ImagePreprocess`, inside the graph)
      -> the task's network (`TaskModule.deployable()`: backbone + head, raw outputs)
      -> the task's output part (`tasks/<task>/deploy.py`: depth map, logits + class map, boxes after NMS)

uint8 NCHW is what a camera frame or a decoded JPEG already is, so a deployment feeds its pixels without
any preprocessing code; resizing to the input size stays outside (it depends on the application).

`batched_nms_padded` is the detection part every runtime can run: ONNX's `NonMaxSuppression` (one NMS per
image and class, no coordinate-offset trick, so no float32 precision loss on large offsets) and a padded,
fixed-size output (boxes (N, K, 4), scores (N, K), labels (N, K), num_detections (N,)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from tasks.common.data import IMAGENET_MEAN, IMAGENET_STD

INPUT_NAME = "image"
INPUT_DESCRIPTION = (
    "uint8 RGB images (N, 3, H, W), values 0..255 (no normalization: the graph divides by 255 and applies "
    f"the ImageNet mean {list(IMAGENET_MEAN)} and std {list(IMAGENET_STD)} itself)"
)


class ImagePreprocess(nn.Module):
    """(N, 3, H, W) uint8 RGB -> (N, 3, H, W) float32 normalized as `tasks.common.data.normalize` does."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) uint8 -> (N, 3, H, W) float32."""
        # The same two float operations as normalize(): x / 255, then (x - mean) / std.
        return (images.float() / 255.0 - self.mean) / self.std


class DeployableModel(nn.Module):
    """uint8 images -> the task's deployment outputs.

    Args:
        network: The task's network (`TaskModule.deployable()`): normalized images -> raw outputs.
        outputs: The task's output part: called with (raw outputs, images) and returning a tuple of tensors
            in the order of `outputs.output_names`.
    """

    def __init__(self, network: nn.Module, outputs: nn.Module) -> None:
        super().__init__()
        self.preprocess = ImagePreprocess()
        self.network = network
        self.outputs = outputs

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the graph outputs, in order."""
        return tuple(self.outputs.output_names)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """(N, 3, H, W) uint8 -> the task's outputs (see `output_names`)."""
        return self.outputs(self.network(self.preprocess(images)), images)


# Candidates scored below this (the -1 of those under the caller's threshold) never enter NMS.
_SCORE_FLOOR = -0.5


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """`values.gather(1, index[..., None].expand(N, M, D))` as one Gather on the flattened rows.

    Why: the exported `Expand` + `GatherElements` of the expanded form cost onnxruntime 7.6 ms of an 88 ms int8
    SSDLite run at batch 8 (27000 candidate boxes per image); indexing the (N * A, D) rows takes one `Gather`.

    Args:
        values: (N, A, D), e.g. boxes.
        index: (N, M) int64 row indices into each image's A rows.

    Returns:
        (N, M, D).
    """
    n, rows, width = values.shape
    offsets = torch.arange(n, device=index.device).view(-1, 1) * int(rows)  # (N, 1): image i's first row
    picked = values.reshape(-1, int(width))[(index + offsets).reshape(-1)]  # (N * M, D)
    return picked.reshape(-1, int(index.shape[1]), int(width))


class _NonMaxSuppression(torch.autograd.Function):
    """Per-(batch, class) NMS with ONNX `NonMaxSuppression` semantics; exports as that one ONNX op.

    Eager: torchvision's `batched_nms` on each row of `boxes`; exported: `NonMaxSuppression` with
    `max_output_boxes_per_class` = all candidates, the IoU threshold and a score threshold of -0.5 (the
    caller marks candidates below its own threshold with a score of -1), so both return every kept
    candidate of every row.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:  # noqa: ANN001
        """Boxes (B, M, 4), scores (B, 1, M) -> (S, 3) int64 rows [batch, 0, box], best first per row."""
        rows, m = boxes.shape[0], boxes.shape[1]
        flat_boxes, flat_scores = boxes.reshape(-1, 4), scores.reshape(-1)
        groups = torch.arange(rows, device=boxes.device).repeat_interleave(m)
        candidates = torch.nonzero(flat_scores > _SCORE_FLOOR).squeeze(1)
        keep = candidates[
            batched_nms(flat_boxes[candidates], flat_scores[candidates], groups[candidates], iou_threshold)
        ]
        order = torch.argsort(groups[keep], stable=True)  # row-major, score order within a row
        keep = keep[order]
        batch = keep // m
        return torch.stack([batch, torch.zeros_like(batch), keep % m], dim=1)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float):  # noqa: ANN001, ANN205 -- TorchScript exporter API
        """The ONNX node (opset >= 11)."""
        max_per_class = g.op("Constant", value_t=torch.tensor([2**31 - 1], dtype=torch.int64))
        iou = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32))
        floor = g.op("Constant", value_t=torch.tensor([_SCORE_FLOOR], dtype=torch.float32))
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou, floor)


def batched_nms_padded(
    boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, *, iou_threshold: float, max_detections: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """NMS per image and class, then each image's best `max_detections`, padded to a fixed size.

    Candidates come grouped by class: row r of the (N, G, M) inputs holds class-group r's M candidates of
    each image (e.g. one group per class, its top-M boxes), and NMS runs within each (image, group).

    Args:
        boxes: (N, G, M, 4) candidate boxes x1y1x2y2.
        scores: (N, G, M) their scores.
        labels: (N, G, M) int64 their labels.
        valid: (N, G, M) bool: candidates that passed the score threshold (the others are never kept).
        iou_threshold: NMS IoU: a box overlapping a better one of its group by more than this is dropped.
        max_detections: K, detections per image (at most G * M).

    Returns:
        boxes (N, K, 4), scores (N, K), labels (N, K) int64 and num_detections (N,) int64: the first
        num_detections[i] entries of image i are its detections by decreasing score; the rest are zeros.
    """
    # Only the batch is dynamic in an export: -1 for it in every reshape, the other sizes as numbers.
    groups, m = int(scores.shape[1]), int(scores.shape[2])
    masked = torch.where(valid, scores, torch.full_like(scores, -1.0))  # invalid candidates sort last
    selected = _NonMaxSuppression.apply(boxes.reshape(-1, m, 4), masked.reshape(-1, 1, m), iou_threshold)
    row, box = selected[:, 0], selected[:, 2]
    flat = row * m + box  # index into (N * G * M)
    picked = masked.reshape(-1)[flat]
    # Dense (N * G * M) scores of the kept candidates, -1 elsewhere; then each image's top K.
    dense = torch.full_like(masked.reshape(-1), -1.0).index_put((flat,), picked)
    k = min(int(max_detections), groups * m)
    top_scores, top_idx = dense.reshape(-1, groups * m).topk(k, dim=1)  # (N, K)
    keep = top_scores > 0.0  # kept candidates passed a threshold >= 0; padding is -1
    out_boxes = gather_rows(boxes.reshape(-1, groups * m, 4), top_idx)
    out_labels = labels.reshape(-1, groups * m).gather(1, top_idx)
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    out_boxes = torch.where(keep.unsqueeze(-1), out_boxes, zero)
    out_scores = torch.where(keep, top_scores, zero)
    out_labels = torch.where(keep, out_labels, torch.zeros_like(out_labels))
    return out_boxes, out_scores, out_labels, keep.sum(dim=1)
