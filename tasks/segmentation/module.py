"""The segmentation LightningModule: any registered backbone with any DeepLabv3-family head."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from backbones import create_backbone
from heads.deeplabv3 import FCNAuxHead, create_segmentation_head
from tasks.common.module import TaskModule
from tasks.segmentation.losses import segmentation_loss
from tasks.segmentation.metrics import SegmentationMetrics, format_iou_table
from tasks.segmentation.visualize import comparison_panel
from tasks.segmentation.writer import PaletteMaskWriter


class SegmentationNetwork(nn.Module):
    """Backbone + head: (N, 3, H, W) normalized images -> (N, K, H, W) logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, K, H, W)."""
        return self.head(self.backbone(images), output_size=images.shape[-2:])


class SegmentationModule(TaskModule):
    """Backbone + segmentation head, trained with pixel-wise cross-entropy.

    Args:
        num_classes: Output classes; None takes the data module's at setup (VOC 21, Cityscapes 19, ...).
        backbone: Registered backbone name.
        backbone_kwargs: Family options of the backbone (e.g. {"width_mult": 0.5}).
        pretrained: False, True (ImageNet weights; needs the network) or a local weights file.
        output_stride: 8, 16 or 32.
        head: "deeplabv3_mobile", "deeplabv3", "deeplabv3plus" or "lraspp".
        head_kwargs: The head's options (e.g. {"separable": true, "rates": [6, 12, 18]}).
        ignore_index: Label value excluded from the loss and the metrics.
        aux_loss_weight: Weight of an auxiliary FCN head's loss on the `aux_stride` map (0: none).
        aux_stride: Stride of the map the auxiliary head reads.
        **kwargs: Optimizer, schedule (poly by default, DeepLab's) and image logs
            (`tasks.common.module.TaskModule`).
    """

    monitor = "val/mIoU"
    monitor_mode = "max"
    checkpoint_tag = "miou"
    sized_by_data = True

    def __init__(
        self,
        num_classes: int | None = None,
        backbone: str = "mobilenet_v2",
        backbone_kwargs: dict | None = None,
        pretrained: bool | str = False,
        output_stride: int = 16,
        head: str = "deeplabv3_mobile",
        head_kwargs: dict | None = None,
        ignore_index: int = 255,
        aux_loss_weight: float = 0.0,
        aux_stride: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backbone = create_backbone(
            backbone, pretrained=pretrained, output_stride=output_stride, **(backbone_kwargs or {})
        )
        self.aux_head: nn.Module | None = None
        if num_classes is not None:
            self.build_head(num_classes)

    def build_head(self, num_classes: int) -> None:
        """The head, the optional auxiliary head and the metrics, for `num_classes` classes."""
        hp = self.hparams
        info = self.backbone.feature_info
        self.head = create_segmentation_head(hp.head, info, num_classes, **(hp.head_kwargs or {}))
        if hp.aux_loss_weight > 0:
            self.aux_head = FCNAuxHead(info, num_classes, stride=hp.aux_stride)
        self.metrics = nn.ModuleDict(
            {stage: SegmentationMetrics(num_classes, hp.ignore_index) for stage in ("val", "test")}
        )

    def deployable(self) -> nn.Module:
        """Backbone + head (`SegmentationNetwork`, sharing this module's weights): images -> logits."""
        if self.head is None:
            raise RuntimeError("the head is built at setup from the data's classes; pass num_classes to use it sooner")
        return SegmentationNetwork(self.backbone, self.head)

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) normalized images -> (N, num_classes, H, W) logits."""
        return self.deployable()(images)

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        with self.full_precision():  # float32 under mixed precision
            return segmentation_loss(logits.float(), target, self.hparams.ignore_index)

    def network_loss(self, outputs: Tensor, batch: dict) -> Tensor:
        """Cross-entropy of `deployable()`'s (N, K, H, W) logits against the batch's masks."""
        return self._loss(outputs, batch["mask"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Cross-entropy (+ weighted auxiliary loss) on a batch of crops."""
        images = batch["image"]
        features = self.backbone(images)
        logits = self.head(features, output_size=images.shape[-2:])  # (N, K, H, W)
        loss = self._loss(logits, batch["mask"])
        if self.aux_head is not None:
            aux_loss = self._loss(self.aux_head(features, output_size=images.shape[-2:]), batch["mask"])
            self.log("train/aux_loss", aux_loss, batch_size=len(logits), sync_dist=True)
            loss = loss + self.hparams.aux_loss_weight * aux_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits), sync_dist=True)
        return loss

    def evaluate_batch(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Loss and confusion matrix at full resolution; the first batch is drawn to the logger.

        Under DDP the images the sampler repeats to pad the last shards are left out of the confusion
        matrix (`evaluation_samples`), so the summed matrix counts every image once.
        """
        logits = self(batch["image"]).float()
        preds = logits.argmax(1)  # (N, H, W)
        keep, _ = self.evaluation_samples(stage, len(preds))
        self.metrics[stage].update(preds[keep], batch["mask"][keep])
        if keep.any():
            self.add_eval_loss(stage, self._loss(logits[keep], batch["mask"][keep]), int(keep.sum()))
        if self.should_log_images(batch_idx):
            n = self.hparams.log_images
            panel = comparison_panel(batch["image"][:n], batch["mask"][:n], preds[:n], self.hparams.num_classes)
            self.log_image(f"{stage}/image_truth_prediction", panel.float())

    def evaluate_epoch(self, stage: str) -> None:
        """Log mIoU (progress bar), pixel accuracy, per-class IoU; print the per-class table.

        The table is printed by `validate` and `test`, and after the last training epoch.
        """
        metrics = self.metrics[stage]
        result = metrics.compute()  # torchmetrics sums the confusion matrices of all processes
        metrics.reset()
        self.log_result(f"{stage}/mIoU", result["miou"], prog_bar=True)
        self.log_result(f"{stage}/pixel_acc", result["pixel_acc"])
        self.log_result(f"{stage}/mean_acc", result["mean_acc"])
        names = self.class_names
        for name, value in zip(names, result["iou"].tolist()):
            if not math.isnan(value):
                self.log_result(f"{stage}_iou/{name}", value)
        fitting = self.trainer.state.fn == "fit"
        last = fitting and self.current_epoch + 1 >= (self.trainer.max_epochs or 0)
        if self.reporting and (not fitting or last):
            self.print(format_iou_table(names, result["iou"], result["miou"].item(), result["pixel_acc"].item()))

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per image {"name", "mask": (H, W) uint8 class indices at the file's size}."""
        logits = self(batch["image"])
        out = []
        for i, ((h, w), size) in enumerate(zip(batch["input_size"], batch["size"])):
            scores = logits[i : i + 1, :, :h, :w]  # drop the batch padding
            if (h, w) != tuple(size):  # evaluated at base_size: back to the file's size
                scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
            out.append({"name": batch["name"][i], "mask": scores[0].argmax(0).to(torch.uint8).cpu()})
        return out

    def prediction_writer(self) -> Callback:
        """Palette PNG masks."""
        return PaletteMaskWriter()
