"""Detection's deployable graph (decode + NMS inside) and its onnxruntime evaluator.

Graph outputs (the default): "boxes" (N, K, 4) float32 x1y1x2y2 in input pixels, "scores" (N, K),
"labels" (N, K) int64 (1..C-1; 0 in padding) and "num_detections" (N,) int64: image i's detections are
its first num_detections[i] entries, by decreasing score. K = `detections_per_img`. The post-processing
is `heads.ssdlite.postprocess`'s (softmax or sigmoid, per-class top-k, score threshold, per-class NMS,
best K per image) with the module's thresholds.

`--raw` exports the head's outputs instead, for runtimes without NonMaxSuppression: "box_regression"
(N, A, 4) offsets, "cls_logits" (N, A, C) and "default_boxes" (A, 4) x1y1x2y2 in input pixels (decode
with `heads.box_coder.decode_boxes`, weights 10, 10, 5, 5).

The default boxes depend on the input size, so a detection graph has a fixed height and width (the
data's `image_size`, SSD's square input) and a dynamic batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from heads.box_coder import decode_boxes
from tasks.common.deploy.graph import batched_nms_padded, gather_rows
from tasks.common.deploy.onnx_export import TaskDeployment
from tasks.common.deploy.runtime import OnnxEvaluation
from tasks.detection.datamodule import DetectionDataModule
from tasks.detection.module import DetectionModule

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class DetectionOutputs(nn.Module):
    """Decode, score, per-class top-k and threshold, NMS, padded best K per image.

    Args:
        default_boxes: (A, 4) default boxes in input pixels for `image_size`.
        image_size: (H, W) of the input (boxes are clipped to it).
        score_thresh: Candidates scoring at or below this are dropped.
        nms_thresh: Per-class NMS IoU.
        topk_candidates: Candidates per class before NMS.
        detections_per_img: K.
        activation: "softmax" or "sigmoid" (focal-loss models).
    """

    output_names = ("boxes", "scores", "labels", "num_detections")

    def __init__(
        self,
        default_boxes: Tensor,
        image_size: tuple[int, int],
        *,
        score_thresh: float,
        nms_thresh: float,
        topk_candidates: int,
        detections_per_img: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.register_buffer("default_boxes", default_boxes.detach().clone(), persistent=False)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        height, width = self.image_size
        # x1 y1 x2 y2 upper bounds: clipping is one Clip and one Min in the graph (torchvision's
        # `clip_boxes_to_image` slices x and y apart and stacks them back: 11 nodes, the same values)
        self.register_buffer(
            "box_bounds", torch.tensor([width, height, width, height], dtype=torch.float32), persistent=False
        )
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.topk_candidates, self.detections_per_img = int(topk_candidates), int(detections_per_img)
        self.activation = activation

    def forward(self, raw: tuple[Tensor, Tensor], images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(N, A, 4) offsets, (N, A, C) logits -> boxes (N, K, 4), scores (N, K), labels (N, K), count (N,)."""
        box_regression, cls_logits = raw
        if self.activation == "softmax":
            scores = cls_logits.softmax(dim=-1)[..., 1:]  # (N, A, C-1)
        else:
            scores = cls_logits.sigmoid()[..., 1:]
        boxes = decode_boxes(box_regression, self.default_boxes, BOX_WEIGHTS).clamp(min=0).minimum(self.box_bounds)
        # The batch stays dynamic (-1 in every reshape: no shape arithmetic in the graph); anchors and classes are
        # fixed by the export's image size and head.
        anchors, num_fg = int(scores.shape[1]), int(scores.shape[2])
        k = min(self.topk_candidates, anchors)
        # Scores at or below the threshold are dropped after the top-k anyway (the `valid` mask below), so
        # setting them to 0 first changes no output; but it turns almost every element into the same value,
        # on which onnxruntime's TopK is several times faster (90 x 3234 scores, k = 300, 2 threads: 4.9 ms
        # with real scores, 1.4 ms with 99% of them zero). Probabilities are >= 0, so no kept score is 0
        # unless score_thresh < 0, when nothing is masked.
        scores = scores * (scores > self.score_thresh)  # as torch.where(..., 0), but one pass less in onnxruntime
        # Unsorted: NMS orders each class's candidates by score itself, and the final top-K sorts the kept ones;
        # onnxruntime's TopK skips its sort then (isolated: 90 x 2034 scores, 80% of them masked to 0, k = 300, 2
        # threads: 1.9 -> 1.2 ms at batch 1, 14.5 -> 8.8 ms at batch 8; within noise in the benchmark's graphs,
        # whose random heads leave almost no score above its threshold).
        top_scores, top_idx = scores.transpose(1, 2).topk(k, dim=2, sorted=False)  # (N, C-1, k)
        cand_boxes = gather_rows(boxes, top_idx.reshape(-1, num_fg * k))  # (N, (C-1) * k, 4)
        labels = torch.arange(1, num_fg + 1, device=scores.device).view(1, -1, 1).expand_as(top_idx)
        return batched_nms_padded(
            cand_boxes.reshape(-1, num_fg, k, 4), top_scores, labels, top_scores > self.score_thresh,
            iou_threshold=self.nms_thresh, max_detections=self.detections_per_img,
        )  # fmt: skip


class RawDetectionOutputs(nn.Module):
    """The head's offsets and logits, and the default boxes to decode them with."""

    output_names = ("box_regression", "cls_logits", "default_boxes")

    def __init__(self, default_boxes: Tensor) -> None:
        super().__init__()
        self.register_buffer("default_boxes", default_boxes.detach().clone(), persistent=False)

    def forward(self, raw: tuple[Tensor, Tensor], images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, A, 4), (N, A, C) -> the same, and (A, 4)."""
        box_regression, cls_logits = raw
        return box_regression, cls_logits, self.default_boxes + 0.0  # + 0: an op, so the output has a producer


class OnnxDetectionModule(OnnxEvaluation, DetectionModule):
    """`DetectionModule` whose network is an exported file run by onnxruntime (same COCO / VOC evaluation).

    A raw export feeds the module's own loss and post-processing; a default export's boxes come from the
    graph's NMS (what a deployment gets), so there is no loss to log.
    """

    def onnx_forward(self, outputs: dict[str, Tensor]) -> Any:
        """Raw exports: (offsets, logits) as `DetectionModule.forward`; else the graph's detections."""
        if "cls_logits" in outputs:
            return outputs["box_regression"], outputs["cls_logits"]
        return outputs

    def _graph_detections(self, images: Tensor, sizes: list) -> list[dict]:
        out = self(images)
        size = tuple(images.shape[-2:])
        detections = []
        for i, (height, width) in enumerate(sizes):
            count = int(out["num_detections"][i])
            scale = torch.tensor([width / size[1], height / size[0]] * 2, device=images.device)
            detections.append(
                {
                    "boxes": out["boxes"][i, :count] * scale,  # to the file's pixels, as DetectionModule.detect
                    "scores": out["scores"][i, :count],
                    "labels": out["labels"][i, :count],
                }
            )
        return detections

    def evaluate_batch(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Raw exports: `DetectionModule.evaluate_batch`; else the graph's detections, kept for the epoch."""
        if self.onnx_model.raw:
            return super().evaluate_batch(batch, batch_idx, stage)
        if not batch["targets"]:
            return None
        for det, image_id in zip(self._graph_detections(batch["image"], batch["size"]), batch["image_id"]):
            self._outputs.append({"image_id": image_id, **{k: v.cpu() for k, v in det.items()}})
        return None

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """As `DetectionModule.predict_step`, with the graph's detections for a default export."""
        if self.onnx_model.raw:
            return super().predict_step(batch, batch_idx)
        detections = self._graph_detections(batch["image"], batch["size"])
        return [
            {**{k: v.cpu() for k, v in det.items()}, "name": name, "path": path, "image_id": image_id}
            for det, name, path, image_id in zip(detections, batch["name"], batch["path"], batch["image_id"])
        ]


class DetectionDeployment(TaskDeployment):
    """Detection: dynamic batch; height and width fixed to the data's `image_size`."""

    task = "detection"
    module_class = DetectionModule
    onnx_module_class = OnnxDetectionModule
    dynamic_size = False

    def outputs(self, module: DetectionModule, *, raw: bool, image_size: tuple[int, int]) -> nn.Module:
        """Post-processed detections, or the raw head outputs with the default boxes."""
        default_boxes = module.head.default_boxes(image_size, "cpu")
        if raw:
            return RawDetectionOutputs(default_boxes)
        hp = module.hparams
        return DetectionOutputs(
            default_boxes, image_size, score_thresh=hp.score_thresh, nms_thresh=hp.nms_thresh,
            topk_candidates=hp.topk_candidates, detections_per_img=hp.detections_per_img,
            activation="sigmoid" if hp.classification_loss == "focal" else "softmax",
        )  # fmt: skip

    def example_size(self, datamodule: DetectionDataModule) -> tuple[int, int]:
        """The data's square `image_size`."""
        return (int(datamodule.image_size), int(datamodule.image_size))

    def calibration_transform(self, datamodule: DetectionDataModule) -> Any:
        """The evaluation transform with boxes (the predict transform wraps it for images alone)."""
        return datamodule.predict_transform().transform

    def describe_outputs(self, module: Any) -> dict[str, str]:
        """What each output holds."""
        k = module.hparams.detections_per_img
        return {
            "boxes": f"float32 (N, {k}, 4) x1y1x2y2 in input pixels, best first; zeros after num_detections",
            "scores": f"float32 (N, {k})",
            "labels": f"int64 (N, {k}) class index 1..{module.hparams.num_classes - 1} (0: padding)",
            "num_detections": "int64 (N,) valid entries per image",
            "box_regression": "float32 (N, A, 4) raw offsets (weights 10, 10, 5, 5)",
            "cls_logits": f"float32 (N, A, {module.hparams.num_classes}) raw logits, class 0 the background",
            "default_boxes": "float32 (A, 4) x1y1x2y2 in input pixels",
        }


DEPLOYMENT = DetectionDeployment()
