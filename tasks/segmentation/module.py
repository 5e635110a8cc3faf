"""LightningModule for semantic segmentation: any registered backbone with any DeepLabv3-family head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchvision.models.segmentation.fcn import FCNHead

from backbones import create_backbone
from heads.deeplabv3 import create_segmentation_head
from tasks.segmentation.metrics import SegmentationMetrics, format_iou_table
from tasks.segmentation.visualize import comparison_panel

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine", "constant")


class SegmentationModel(LightningModule):
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
        optimizer: "sgd" (momentum, the DeepLab recipes) or "adamw".
        lr: Peak learning rate.
        momentum: SGD momentum.
        weight_decay: Weight decay of convolution and linear weights (not of norms and biases).
        schedule: "poly" (DeepLab: (1 - t)^power), "cosine" or "constant", stepped every batch.
        poly_power: Exponent of the poly schedule.
        warmup_steps: Linear warm-up steps.
        log_images: Validation samples drawn as image | ground truth | prediction in TensorBoard.
    """

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
        optimizer: str = "adamw",
        lr: float = 2e-3,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        schedule: str = "poly",
        poly_power: float = 0.9,
        warmup_steps: int = 0,
        log_images: int = 4,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{optimizer}'; choose one of {OPTIMIZERS}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{schedule}'; choose one of {SCHEDULES}")
        self.save_hyperparameters()
        self.backbone = create_backbone(
            backbone, pretrained=pretrained, output_stride=output_stride, **(backbone_kwargs or {})
        )
        self.head: nn.Module | None = None
        self.aux_head: nn.Module | None = None
        self.aux_index: int | None = None
        self._panel: Tensor | None = None
        if num_classes is not None:
            self._build_head(num_classes)

    def _build_head(self, num_classes: int) -> None:
        hp = self.hparams
        info = self.backbone.feature_info
        self.head = create_segmentation_head(hp.head, info, num_classes, **(hp.head_kwargs or {}))
        if hp.aux_loss_weight > 0:
            self.aux_index = info.index_of_stride(hp.aux_stride, last=False)
            self.aux_head = FCNHead(info.channels[self.aux_index], num_classes)
        self.val_metrics = SegmentationMetrics(num_classes, hp.ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, hp.ignore_index)
        # Saved in the checkpoint's hyperparameters, so `load_from_checkpoint` rebuilds the same head.
        self.hparams.num_classes = num_classes

    def setup(self, stage: str) -> None:
        """Size the head from the data module's classes, or check that they agree with `num_classes`."""
        datamodule = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(datamodule, "num_classes", None)
        if self.head is None:
            if data_classes is None:
                raise ValueError("model.num_classes is not set and the data module does not provide num_classes")
            self._build_head(data_classes)
        elif data_classes is not None and data_classes != self.hparams.num_classes:
            raise ValueError(
                f"the model predicts {self.hparams.num_classes} classes but the dataset has {data_classes}; "
                f"leave model.num_classes unset to take the dataset's"
            )

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) normalized images -> (N, num_classes, H, W) logits."""
        return self._logits(images)[0]

    def _logits(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.head is None:
            raise RuntimeError("the head is built at setup from the data's classes; pass num_classes to use it sooner")
        features = self.backbone(images)
        size = images.shape[-2:]
        logits = F.interpolate(self.head(features), size=size, mode="bilinear", align_corners=False)  # (N, K, H, W)
        aux = None
        if self.aux_head is not None and self.training:
            aux = F.interpolate(
                self.aux_head(features[self.aux_index]), size=size, mode="bilinear", align_corners=False
            )
        return logits, aux

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if not (target != self.hparams.ignore_index).any():
            return logits.sum() * 0.0  # an all-ignored crop: cross-entropy's mean would be 0 / 0
        return F.cross_entropy(logits, target, ignore_index=self.hparams.ignore_index)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Cross-entropy (+ weighted auxiliary loss) on a batch of crops."""
        logits, aux = self._logits(batch["image"])
        loss = self._loss(logits, batch["mask"])
        if aux is not None:
            aux_loss = self._loss(aux, batch["mask"])
            self.log("train/aux_loss", aux_loss)
            loss = loss + self.hparams.aux_loss_weight * aux_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def _evaluate(self, batch: dict, batch_idx: int, metrics: SegmentationMetrics, prefix: str) -> None:
        logits = self(batch["image"])
        loss = self._loss(logits, batch["mask"])
        preds = logits.argmax(1)  # (N, H, W)
        metrics.update(preds, batch["mask"])
        self.log(f"{prefix}/loss", loss, batch_size=len(preds))
        if batch_idx == 0 and self.hparams.log_images:
            n = self.hparams.log_images
            self._panel = comparison_panel(batch["image"][:n], batch["mask"][:n], preds[:n], self.hparams.num_classes)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Accumulate the confusion matrix at full resolution."""
        self._evaluate(batch, batch_idx, self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Accumulate the confusion matrix at full resolution."""
        self._evaluate(batch, batch_idx, self.test_metrics, "test")

    def _class_names(self) -> list[str]:
        # The data module knows the names; a model loaded on its own numbers the classes.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def _epoch_end(self, metrics: SegmentationMetrics, prefix: str, print_table: bool) -> None:
        result = metrics.compute()
        metrics.reset()
        self.log(f"{prefix}/mIoU", result["miou"], prog_bar=True)
        self.log(f"{prefix}/pixel_acc", result["pixel_acc"])
        self.log(f"{prefix}/mean_acc", result["mean_acc"])
        names = self._class_names()
        for name, value in zip(names, result["iou"].tolist()):
            if not math.isnan(value):
                self.log(f"{prefix}_iou/{name}", value)
        if print_table:
            self.print(format_iou_table(names, result["iou"], result["miou"].item(), result["pixel_acc"].item()))
        self._log_panel(f"{prefix}/image_truth_prediction")

    def _log_panel(self, tag: str) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if self._panel is not None and hasattr(experiment, "add_image") and not self.trainer.sanity_checking:
            experiment.add_image(tag, self._panel.float().cpu(), self.global_step)
        self._panel = None

    def on_validation_epoch_end(self) -> None:
        """Log mIoU (progress bar), pixel accuracy, per-class IoU and the overlay panel."""
        # The table is printed when validating on its own, and after the last training epoch.
        fitting = self.trainer.state.fn == "fit"
        last = fitting and self.current_epoch + 1 >= (self.trainer.max_epochs or 0)
        self._epoch_end(self.val_metrics, "val", not self.trainer.sanity_checking and (not fitting or last))

    def on_test_epoch_end(self) -> None:
        """Log test metrics and print the per-class table."""
        self._epoch_end(self.test_metrics, "test", True)

    def predict_step(self, batch: dict, batch_idx: int) -> list[tuple[str, Tensor]]:
        """Class-index maps at each image's original size: [(path, (H, W) uint8), ...]."""
        logits = self(batch["image"])
        out = []
        for i, (path, (h, w), original) in enumerate(zip(batch["path"], batch["size"], batch["original_size"])):
            scores = logits[i : i + 1, :, :h, :w]  # drop the batch padding
            if (h, w) != tuple(original):  # evaluated at base_size: back to the file's size
                scores = F.interpolate(scores, size=tuple(original), mode="bilinear", align_corners=False)
            out.append((path, scores[0].argmax(0).to(torch.uint8).cpu()))
        return out

    def configure_optimizers(self) -> dict:
        """SGD or AdamW; decay on weights only; poly / cosine / constant per step, with warm-up."""
        hp = self.hparams
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            t = min(1.0, step / total)
            if hp.schedule == "poly":
                return (1.0 - t) ** hp.poly_power
            if hp.schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * t))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
