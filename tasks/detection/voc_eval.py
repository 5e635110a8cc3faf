"""Pascal VOC mAP@0.5 (all-point interpolated AP, difficult objects ignored).

Everingham et al., "The PASCAL Visual Object Classes Challenge", IJCV 2010; the VOC2010+ devkit's
area under the monotone precision envelope (as `voc_eval.py` of py-faster-rcnn with use_07_metric=False).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    wh = (np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2])).clip(0)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, np.finfo(np.float64).eps)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone (right-to-left maximum) precision-recall curve."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def voc_map(
    detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int, iou_threshold: float = 0.5
) -> dict[str, float | list[float]]:
    """VOC mean AP over classes 1..num_classes-1 that have non-difficult ground truth.

    Args:
        detections: Per image "boxes" (K, 4) x1y1x2y2, "scores" (K,), "labels" (K,), "image_id".
        ground_truth: Per image "boxes" (G, 4), "labels" (G,), "difficult" (G,) bool, "image_id".
        num_classes: Classes including the background.
        iou_threshold: IoU for a true positive.

    Returns:
        "mAP" and the per-class "AP" list (NaN for classes without ground truth).
    """
    gt_by_image = {g["image_id"]: g for g in ground_truth}
    aps = []
    for cls in range(1, num_classes):
        gts, num_pos = {}, 0
        for image_id, g in gt_by_image.items():
            mask = np.asarray(g["labels"]) == cls
            difficult = np.asarray(g.get("difficult", ()), dtype=bool)
            difficult = (difficult if len(difficult) == len(mask) else np.zeros(len(mask), bool))[mask]
            gts[image_id] = (
                np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)[mask],
                difficult,
                np.zeros(mask.sum(), dtype=bool),
            )
            num_pos += int((~difficult).sum())
        dets = [
            (float(s), d["image_id"], np.asarray(b, dtype=np.float64))
            for d in detections
            for b, s, lab in zip(d["boxes"], d["scores"], d["labels"])
            if int(lab) == cls
        ]
        if num_pos == 0:
            aps.append(float("nan"))
            continue
        dets.sort(key=lambda x: -x[0])
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for i, (_, image_id, box) in enumerate(dets):
            boxes, difficult, used = gts.get(image_id, (np.zeros((0, 4)), np.zeros(0, bool), np.zeros(0, bool)))
            if len(boxes) == 0:
                fp[i] = 1
                continue
            ious = _iou(box, boxes)
            j = int(ious.argmax())
            if ious[j] >= iou_threshold:
                if difficult[j]:
                    continue  # matching a difficult object counts neither way
                if not used[j]:
                    tp[i], used[j] = 1, True
                else:
                    fp[i] = 1
            else:
                fp[i] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / num_pos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(average_precision(recall, precision))
    valid = [a for a in aps if not np.isnan(a)]
    return {"mAP": float(np.mean(valid)) if valid else 0.0, "AP": aps}
