"""SSDLite detection as a LightningModule: any registered backbone + `heads.ssdlite.SSDLiteHead`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from torch import Tensor

from backbones import Backbone, create_backbone, get_backbone_entry
from heads.ssdlite import SSDLiteHead, postprocess
from tasks.common.files import write_json_atomic
from tasks.detection.coco_eval import coco_evaluate, format_summary
from tasks.detection.datasets.coco import coco_from_dict
from tasks.detection.losses import ssd_loss
from tasks.detection.visualize import DetectionWriter, draw_detections
from tasks.detection.voc_eval import voc_map


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


class SSDLiteModule(pl.LightningModule):
    """SSDLite on any backbone: training loss, COCO / VOC evaluation, predictions.

    Args:
        backbone: Registered backbone name.
        num_classes: Classes including background; None to take it from the data module.
        pretrained: Backbone weights: False, True (ImageNet, needs the network) or a local file.
        feature_location: "expansion" (paper taps) or "stage".
        backbone_kwargs: Family options of the backbone (e.g. {"width_mult": 0.5}).
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
        optimizer: "sgd", "adamw" or "rmsprop" (TF's settings of the paper: decay 0.9, momentum, epsilon 1).
        lr: Peak learning rate.
        weight_decay: Weight decay.
        momentum: SGD / RMSProp momentum.
        warmup_epochs: Linear warm-up length (fractions allowed), then cosine decay to 0.
        eval_backend: "pycocotools" or "faster_coco_eval" (same numbers).
        log_images: Validation images drawn with their predictions to TensorBoard (0 = none).
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        num_classes: int | None = None,
        pretrained: bool | str = False,
        feature_location: str = "expansion",
        backbone_kwargs: dict | None = None,
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
        optimizer: str = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 4e-5,
        momentum: float = 0.9,
        warmup_epochs: float = 0.3,
        eval_backend: str = "pycocotools",
        log_images: int = 4,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adamw", "rmsprop"):
            raise ValueError(f"optimizer must be 'sgd', 'adamw' or 'rmsprop', got {optimizer!r}")
        if classification_loss not in ("hard_negative", "focal"):
            raise ValueError(f"classification_loss must be 'hard_negative' or 'focal', got {classification_loss!r}")
        self.save_hyperparameters()
        self.backbone = build_detection_backbone(
            backbone, pretrained=pretrained, feature_location=feature_location, **(backbone_kwargs or {})
        )
        self.head: SSDLiteHead | None = None
        if num_classes is not None:
            self._build_head(num_classes)
        self._outputs: list[dict] = []
        self._gt: tuple | None = None

    def _build_head(self, num_classes: int) -> None:
        hp = self.hparams
        self.head = SSDLiteHead(
            self.backbone.feature_info, num_classes, extra_channels=tuple(hp.extra_channels),
            min_scale=hp.min_scale, max_scale=hp.max_scale, aspect_ratios=tuple(hp.aspect_ratios),
            reduce_lowest=hp.reduce_lowest, clip_default_boxes=hp.clip_default_boxes,
            prior_prob=0.01 if hp.classification_loss == "focal" else None,
        )  # fmt: skip
        self.hparams.num_classes = num_classes

    def setup(self, stage: str) -> None:
        """Size the head from the data module's classes when `num_classes` was not given."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None) if datamodule is not None else None
        if self.head is None:
            if data_classes is None:
                raise ValueError("num_classes is not set and the data module does not provide it")
            self._build_head(data_classes)
        elif data_classes is not None and data_classes != self.head.num_classes:
            raise ValueError(
                f"the model predicts {self.head.num_classes} classes (with background) but the data has "
                f"{data_classes}; set model.num_classes to {data_classes} or leave it unset"
            )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, H, W) normalised images -> box offsets (N, A, 4) and class logits (N, A, C)."""
        return self.head(self.backbone(images))

    def _loss(self, images: Tensor, targets: list[dict]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        box_regression, cls_logits = self(images)  # (N, A, 4), (N, A, C)
        default_boxes = self.head.default_boxes(tuple(images.shape[-2:]), images.device)
        hp = self.hparams
        losses = ssd_loss(
            box_regression, cls_logits, targets, default_boxes, iou_threshold=hp.iou_threshold,
            neg_pos_ratio=hp.neg_pos_ratio, classification=hp.classification_loss, focal_alpha=hp.focal_alpha,
            focal_gamma=hp.focal_gamma,
        )  # fmt: skip
        return losses, box_regression, cls_logits

    def training_step(self, batch, batch_idx: int) -> Tensor:
        """SSD loss of a batch."""
        images, targets = batch
        losses, _, _ = self._loss(images, targets)
        n = images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        self.log("train/box_loss", losses["box_loss"], batch_size=n)
        self.log("train/cls_loss", losses["cls_loss"], batch_size=n)
        return losses["loss"]

    def detect(self, images: Tensor, box_regression: Tensor, cls_logits: Tensor, orig_sizes) -> list[dict]:
        """Post-process raw outputs and scale boxes back to each original image."""
        size = tuple(images.shape[-2:])
        hp = self.hparams
        detections = postprocess(
            box_regression, cls_logits, self.head.default_boxes(size, images.device), size,
            score_thresh=hp.score_thresh, nms_thresh=hp.nms_thresh, topk_candidates=hp.topk_candidates,
            detections_per_img=hp.detections_per_img,
            activation="sigmoid" if hp.classification_loss == "focal" else "softmax",
        )  # fmt: skip
        for det, (height, width) in zip(detections, orig_sizes):
            scale = torch.tensor([width / size[1], height / size[0]] * 2, device=det["boxes"].device)
            det["boxes"] = det["boxes"] * scale
        return detections

    def _eval_step(self, batch, batch_idx: int, stage: str) -> None:
        images, targets = batch
        if not targets:
            return
        losses, box_regression, cls_logits = self._loss(images, targets)
        self.log(f"{stage}/loss", losses["loss"], batch_size=images.shape[0])
        detections = self.detect(images, box_regression, cls_logits, [t["orig_size"] for t in targets])
        for det, target in zip(detections, targets):
            self._outputs.append({"image_id": target["image_id"], **{k: v.cpu() for k, v in det.items()}})
        if batch_idx == 0 and self.hparams.log_images:
            self._log_images(images, detections, [t["orig_size"] for t in targets], stage)

    def _log_images(self, images: Tensor, detections: list[dict], orig_sizes, stage: str) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        names = self._class_names()
        for i in range(min(self.hparams.log_images, len(images))):
            height, width = orig_sizes[i]
            scale = torch.tensor([images.shape[-1] / width, images.shape[-2] / height] * 2)
            det = {k: v.cpu() for k, v in detections[i].items()}
            det["boxes"] = det["boxes"] * scale
            experiment.add_image(
                f"{stage}/predictions_{i}", draw_detections(images[i].cpu(), det, names), self.global_step
            )

    def _class_names(self) -> list[str] | None:
        datamodule = getattr(self.trainer, "datamodule", None)
        return getattr(datamodule, "class_names", None) if datamodule is not None else None

    def validation_step(self, batch, batch_idx: int) -> None:
        """Loss and detections of a validation batch."""
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        """Loss and detections of a test batch."""
        self._eval_step(batch, batch_idx, "test")

    def on_validation_epoch_end(self) -> None:
        """COCO and VOC metrics of the validation split."""
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        """COCO and VOC metrics of the test split."""
        self._evaluate("test")

    def _evaluate(self, stage: str) -> None:
        outputs, self._outputs = self._outputs, []
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "datasets", {}).get(stage) if datamodule is not None else None
        if dataset is None or not outputs:
            self.log(f"{stage}/mAP", 0.0)
            return
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
        self.log(f"{stage}/mAP", metrics["AP"], prog_bar=True)
        self.log(f"{stage}/mAP50", metrics["AP50"])
        self.log(f"{stage}/mAP75", metrics["AP75"])
        self.log(f"{stage}/voc_mAP50", voc["mAP"], prog_bar=True)
        if final and not self.trainer.sanity_checking:
            out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            write_json_atomic(out_dir / f"detections_{stage}.json", results)
            write_json_atomic(out_dir / f"metrics_{stage}.json", {**metrics, "voc_mAP50": voc["mAP"]})
            print(f"COCO bbox evaluation of the {stage} split ({len(outputs)} images, {dataset.source}):")
            print(format_summary(metrics))
            print(f" VOC mAP@0.5 = {voc['mAP']:0.4f}")
            print(f"detections written to {out_dir / f'detections_{stage}.json'}")

    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        """Detections in original-image pixels, with each image's id and path."""
        images, targets = batch
        box_regression, cls_logits = self(images)
        detections = self.detect(images, box_regression, cls_logits, [t["orig_size"] for t in targets])
        return [{**{k: v.cpu() for k, v in d.items()}, "image_id": t["image_id"], "path": t.get("path")}
                for d, t in zip(detections, targets)]  # fmt: skip

    def configure_callbacks(self) -> list:
        """Best checkpoint by validation COCO mAP, the learning rate (with a logger), the `predict` writer."""
        callbacks = [
            ModelCheckpoint(monitor="val/mAP", mode="max", save_last=True, filename="best-{epoch}-{step}"),
            DetectionWriter(),
        ]
        if self._trainer is not None and self.trainer.logger is not None:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return callbacks

    def configure_optimizers(self):
        """SGD, AdamW or RMSProp (no weight decay on norms and biases), linear warm-up then cosine decay per step."""
        hp = self.hparams
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)
        elif hp.optimizer == "rmsprop":
            optimizer = torch.optim.RMSprop(groups, lr=hp.lr, alpha=0.9, eps=1.0, momentum=hp.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = min(total - 1, int(hp.warmup_epochs * total / epochs)) if total > 1 else 0

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


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
