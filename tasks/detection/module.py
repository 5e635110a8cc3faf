"""SSDLite detection as a LightningModule: any registered backbone + `heads.ssdlite.SSDLiteHead`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from backbones import Backbone, create_backbone, get_backbone_entry
from heads.ssdlite import create_detection_head, postprocess
from tasks.common.distributed import all_gather_object, broadcast_object
from tasks.common.files import write_json_atomic
from tasks.common.module import TaskModule
from tasks.detection.coco_eval import coco_evaluate, format_summary
from tasks.detection.datasets.coco import coco_from_dict
from tasks.detection.losses import ssd_loss
from tasks.detection.visualize import draw_detections
from tasks.detection.voc_eval import voc_map
from tasks.detection.writer import DetectionWriter


def build_detection_backbone(
    name: str, *, pretrained: bool | str = False, feature_location: str = "expansion", **backbone_kwargs
) -> Backbone:
    """The backbone with SSDLite's two taps: its last stride-16 and stride-32 maps.

    With `feature_location="expansion"` (the MobileNetV2 paper: the stride-16 expansion layer and the
    last 1x1 conv), nets without expansion taps fall back to their stride-16 and stride-32 stage outputs,
    with a warning.

    Args:
        name: Registered backbone name.
        pretrained: As `create_backbone`.
        feature_location: "expansion" or "stage".
        **backbone_kwargs: Family options (width_mult, ...).

    Returns:
        A backbone returning exactly two maps, at strides 16 and 32.
    """
    get_backbone_entry(name)  # an unknown name fails here, with the closest names, not in the fallback below
    try:
        probe = create_backbone(name, feature_location=feature_location, **backbone_kwargs)
    except (NotImplementedError, ValueError) as err:
        if feature_location != "expansion":
            raise
        warnings.warn(
            f"{name} has no expansion taps ({err}); SSDLite uses its stride-16 and stride-32 stage outputs",
            stacklevel=2,
        )
        feature_location = "stage"
        probe = create_backbone(name, feature_location=feature_location, **backbone_kwargs)
    info = probe.feature_info
    taps = (info.index_of_stride(16), info.index_of_stride(32))
    return create_backbone(
        name, pretrained=pretrained, feature_location=feature_location, out_indices=taps, **backbone_kwargs
    )


class DetectionNetwork(nn.Module):
    """Backbone + SSDLite head: (N, 3, H, W) normalized images -> (N, A, 4) offsets, (N, A, C) logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) -> (N, A, 4), (N, A, C)."""
        return self.head(self.backbone(images))


class DetectionModule(TaskModule):
    """SSDLite on any backbone: training loss, COCO / VOC evaluation, predictions.

    Args:
        backbone: Registered backbone name.
        num_classes: Classes including background; None to take it from the data module.
        pretrained: Backbone weights: False, True (ImageNet, needs the network) or a local file.
        feature_location: "expansion" (paper taps) or "stage".
        backbone_kwargs: Family options of the backbone (e.g. {"width_mult": 0.5}).
        head: Detection head ("ssdlite").
        extra_channels: Channels of the extra blocks (paper: 512, 256, 256, 128).
        min_scale: Default-box scale of the first map.
        max_scale: Default-box scale of the last map.
        aspect_ratios: Default-box aspect ratios.
        reduce_lowest: Three boxes on the first map (TF / paper) or the full set (torchvision).
        clip_default_boxes: Clip default boxes to the image.
        classification_loss: "hard_negative" (softmax CE, 3:1 mining) or "focal" (sigmoid focal loss).
        neg_pos_ratio: Hard negatives per positive.
        iou_threshold: Matching IoU.
        focal_alpha: Focal-loss alpha.
        focal_gamma: Focal-loss gamma.
        score_thresh: Post-processing score threshold.
        nms_thresh: Per-class NMS IoU.
        topk_candidates: Candidates per class before NMS.
        detections_per_img: Detections kept per image.
        eval_backend: "auto" (faster-coco-eval when installed, else pycocotools), "pycocotools" or
            "faster_coco_eval" (same numbers).
        weight_decay: Weight decay (TF's SSDLite: 4e-5).
        schedule: Learning-rate schedule; "cosine" by default.
        warmup_epochs: Linear warm-up before the schedule.
        **kwargs: Optimizer, momentum and image logs (`tasks.common.module.TaskModule`).
    """

    monitor = "val/mAP"
    monitor_mode = "max"
    checkpoint_tag = "map"
    sized_by_data = True

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        num_classes: int | None = None,
        pretrained: bool | str = False,
        feature_location: str = "expansion",
        backbone_kwargs: dict | None = None,
        head: str = "ssdlite",
        extra_channels: Sequence[int] = (512, 256, 256, 128),
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0),
        reduce_lowest: bool = True,
        clip_default_boxes: bool = True,
        classification_loss: str = "hard_negative",
        neg_pos_ratio: float = 3.0,
        iou_threshold: float = 0.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.55,
        topk_candidates: int = 300,
        detections_per_img: int = 100,
        eval_backend: str = "auto",
        weight_decay: float = 4e-5,
        schedule: str = "cosine",
        warmup_epochs: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs, **kwargs)
        if classification_loss not in ("hard_negative", "focal"):
            raise ValueError(f"classification_loss must be 'hard_negative' or 'focal', got {classification_loss!r}")
        self.backbone = build_detection_backbone(
            backbone, pretrained=pretrained, feature_location=feature_location, **(backbone_kwargs or {})
        )
        if num_classes is not None:
            self.build_head(num_classes)
        self._outputs: list[dict] = []
        self._gt: tuple | None = None

    def build_head(self, num_classes: int) -> None:
        """The SSDLite head for `num_classes` classes (with the background)."""
        hp = self.hparams
        self.head = create_detection_head(
            hp.head, self.backbone.feature_info, num_classes, extra_channels=tuple(hp.extra_channels),
            min_scale=hp.min_scale, max_scale=hp.max_scale, aspect_ratios=tuple(hp.aspect_ratios),
            reduce_lowest=hp.reduce_lowest, clip_default_boxes=hp.clip_default_boxes,
            prior_prob=0.01 if hp.classification_loss == "focal" else None,
        )  # fmt: skip

    def deployable(self) -> nn.Module:
        """Backbone + head (`DetectionNetwork`, sharing this module's weights): raw offsets and logits."""
        if self.head is None:
            raise RuntimeError("the head is built at setup from the data's classes; pass num_classes to use it sooner")
        return DetectionNetwork(self.backbone, self.head)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) normalised images -> box offsets (N, A, 4) and class logits (N, A, C)."""
        return self.deployable()(images)

    def _losses(self, box_regression: Tensor, cls_logits: Tensor, batch: dict) -> dict[str, Tensor]:
        # float32 from here on under mixed precision: matching, the loss and the decoded boxes.
        box_regression, cls_logits = box_regression.float(), cls_logits.float()
        default_boxes = self.head.default_boxes(tuple(batch["image"].shape[-2:]), box_regression.device)
        hp = self.hparams
        with self.full_precision():
            return ssd_loss(
                box_regression, cls_logits, batch["targets"], default_boxes, iou_threshold=hp.iou_threshold,
                neg_pos_ratio=hp.neg_pos_ratio, classification=hp.classification_loss, focal_alpha=hp.focal_alpha,
                focal_gamma=hp.focal_gamma,
            )  # fmt: skip

    def _loss(self, images: Tensor, targets: list[dict]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        box_regression, cls_logits = self(images)  # (N, A, 4), (N, A, C)
        box_regression, cls_logits = box_regression.float(), cls_logits.float()  # once: `_losses` gets float32
        losses = self._losses(box_regression, cls_logits, {"image": images, "targets": targets})
        return losses, box_regression, cls_logits

    def network_loss(self, outputs: tuple[Tensor, Tensor], batch: dict) -> Tensor:
        """The SSD loss (box + classification) of `deployable()`'s (offsets, logits) on the batch's targets."""
        return self._losses(*outputs, batch)["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """SSD loss of a batch."""
        losses, _, _ = self._loss(batch["image"], batch["targets"])
        n = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train/box_loss", losses["box_loss"], batch_size=n, sync_dist=True)
        self.log("train/cls_loss", losses["cls_loss"], batch_size=n, sync_dist=True)
        return losses["loss"]

    def detect(self, images: Tensor, box_regression: Tensor, cls_logits: Tensor, sizes: Sequence) -> list[dict]:
        """Post-process raw outputs and scale boxes back to each original image ((H, W) in `sizes`)."""
        size = tuple(images.shape[-2:])
        hp = self.hparams
        box_regression, cls_logits = box_regression.float(), cls_logits.float()  # fp32 decoding and NMS
        with self.full_precision():
            detections = postprocess(
                box_regression, cls_logits, self.head.default_boxes(size, images.device), size,
                score_thresh=hp.score_thresh, nms_thresh=hp.nms_thresh, topk_candidates=hp.topk_candidates,
                detections_per_img=hp.detections_per_img,
                activation="sigmoid" if hp.classification_loss == "focal" else "softmax",
            )  # fmt: skip
        for det, (height, width) in zip(detections, sizes):
            scale = torch.tensor([width / size[1], height / size[0]] * 2, device=det["boxes"].device)
            det["boxes"] = det["boxes"] * scale
        return detections

    def evaluate_batch(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Loss and detections of a batch, kept for the epoch's COCO / VOC evaluation."""
        images, targets = batch["image"], batch["targets"]
        if not targets:
            return
        losses, box_regression, cls_logits = self._loss(images, targets)
        # The loss is normalised per batch (by its matched boxes), so under DDP the epoch's loss is close
        # to, not exactly, one process's; the metrics are exact (`evaluate_epoch`).
        self.add_eval_loss(stage, losses["loss"], images.shape[0])
        detections = self.detect(images, box_regression, cls_logits, batch["size"])
        for det, image_id in zip(detections, batch["image_id"]):
            self._outputs.append({"image_id": image_id, **{k: v.cpu() for k, v in det.items()}})
        if self.should_log_images(batch_idx):
            names = self.class_names
            for i in range(min(self.hparams.log_images, len(images))):
                height, width = batch["size"][i]
                scale = torch.tensor([images.shape[-1] / width, images.shape[-2] / height] * 2)
                det = {k: v.cpu() for k, v in detections[i].items()}
                det["boxes"] = det["boxes"] * scale
                self.log_image(f"{stage}/predictions_{i}", draw_detections(images[i].cpu(), det, names))

    def evaluate_epoch(self, stage: str) -> None:
        """COCO and VOC metrics of the split; `validate` / `test` also print them and write JSON files.

        Under DDP every process's detections are gathered and deduplicated by image id (the sampler
        repeats images to pad the last shards); rank 0 evaluates once and writes the files, and every
        process logs the numbers it broadcasts.
        """
        outputs = gather_detections(self._outputs)
        self._outputs = []
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "datasets", {}).get(stage) if datamodule is not None else None
        if dataset is None or not outputs:
            self.log_result(f"{stage}/mAP", 0.0)
            return
        # Trainer.log_dir broadcasts from rank 0: every process asks, before only rank 0 evaluates.
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        summary = self._evaluate(stage, dataset, outputs, out_dir) if self.trainer.is_global_zero else None
        metrics, voc_map50 = broadcast_object(summary)
        self.log_result(f"{stage}/mAP", metrics["AP"], prog_bar=True)
        self.log_result(f"{stage}/mAP50", metrics["AP50"])
        self.log_result(f"{stage}/mAP75", metrics["AP75"])
        self.log_result(f"{stage}/voc_mAP50", voc_map50, prog_bar=True)

    def _evaluate(self, stage: str, dataset: Any, outputs: list[dict], out_dir: Path) -> tuple[dict[str, float], float]:
        """COCO and VOC numbers of all the split's detections (one process); files and summary in validate / test."""
        if self._gt is None or self._gt[0] is not dataset:  # index the ground truth once per dataset
            self._gt = (dataset, coco_from_dict(dataset.to_coco()))
        gt = self._gt[1]
        results = detections_to_coco(outputs, dataset.category_ids)
        final = self.trainer.state.fn in ("validate", "test")  # print and write only outside `fit`
        metrics = coco_evaluate(
            gt, results, image_ids=[o["image_id"] for o in outputs], backend=self.hparams.eval_backend, verbose=False
        )
        records = {r.image_id: r for r in dataset.records}
        ground_truth = [{"image_id": o["image_id"], "boxes": records[o["image_id"]].boxes,
                         "labels": records[o["image_id"]].labels, "difficult": records[o["image_id"]].difficult}
                        for o in outputs]  # fmt: skip
        voc = voc_map(outputs, ground_truth, dataset.num_classes)
        if final and self.reporting:
            write_json_atomic(out_dir / f"detections_{stage}.json", results)
            write_json_atomic(out_dir / f"metrics_{stage}.json", {**metrics, "voc_mAP50": voc["mAP"]})
            print(f"COCO bbox evaluation of the {stage} split ({len(outputs)} images, {dataset.source}):")
            print(format_summary(metrics))
            print(f" VOC mAP@0.5 = {voc['mAP']:0.4f}")
            print(f"detections written to {out_dir / f'detections_{stage}.json'}")
        return metrics, voc["mAP"]

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per image {"name", "path", "image_id", "boxes" (K, 4) in the file's pixels, "scores", "labels"}."""
        if not batch["name"]:  # every image of the batch was corrupt and skipped (skip_corrupt)
            return []
        box_regression, cls_logits = self(batch["image"])
        detections = self.detect(batch["image"], box_regression, cls_logits, batch["size"])
        return [
            {**{k: v.cpu() for k, v in det.items()}, "name": name, "path": path, "image_id": image_id}
            for det, name, path, image_id in zip(detections, batch["name"], batch["path"], batch["image_id"])
        ]

    def prediction_writer(self) -> Callback:
        """JPEGs with boxes drawn and `predictions.json`."""
        return DetectionWriter()


def gather_detections(outputs: list[dict]) -> list[dict]:
    """Every process's per-image detections, each image once (by image id), sorted by image id."""
    by_id: dict[int, dict] = {}
    for shard in all_gather_object(outputs):
        for out in shard:
            by_id.setdefault(int(out["image_id"]), out)
    return [by_id[i] for i in sorted(by_id)]


def detections_to_coco(outputs: list[dict], category_ids: Sequence[int]) -> list[dict]:
    """Detections as COCO results: xywh boxes, contiguous labels mapped back to category ids."""
    results = []
    for out in outputs:
        for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": int(out["image_id"]),
                    "category_id": int(category_ids[label]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results
