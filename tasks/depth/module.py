"""The depth LightningModule: backbone + depth decoder built from names, loss, metrics, image logs."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from backbones import create_backbone
from heads.depth import create_depth_head
from tasks.common.module import TaskModule
from tasks.depth.losses import create_loss, scale_and_shift, valid_mask
from tasks.depth.metrics import DepthMetrics
from tasks.depth.visualize import depth_panels
from tasks.depth.writer import DepthPredictionWriter

# Shown in the progress bar and printed after each validation.
SHOWN = (("abs_rel", "AbsRel"), ("delta1", "delta1"), ("rmse", "RMSE"))


class DepthNetwork(nn.Module):
    """Backbone + decoder: (N, 3, H, W) normalized images -> (N, 1, H, W) depth (or inverse depth)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, 1, H, W)."""
        return self.head(self.backbone(images), output_size=images.shape[-2:])


class DepthModule(TaskModule):
    """Monocular depth: `image -> backbone -> decoder -> depth`.

    Args:
        backbone: Registered backbone name.
        pretrained: False, True (ImageNet weights, needs the network) or a local weights file.
        output_stride: Backbone output stride (32, 16 or 8).
        backbone_kwargs: Family options of the backbone (e.g. {"width_mult": 0.5}).
        head: "nnconv5" (FastDepth) or "fusion" (multi-scale, MiDaS-like).
        head_kwargs: The decoder's options (e.g. {"decoder_channels": [...]}, {"channels": 96}).
        output: "metric" (depth in (0, max_depth)) or "inverse" (relative inverse depth; use loss "ssi").
        max_depth: Largest depth the model predicts and trains on, metres.
        loss: "silog", "l1", "berhu" or "ssi".
        loss_kwargs: The loss's options (e.g. {"lam": 0.85, "scale": 10.0}).
        protocol: Evaluation protocol: "none", "nyu", "kitti_garg", "kitti_eigen".
        eval_max_depth: Cap of the evaluation; None = the protocol's.
        median_scaling: Median-scale each prediction before the metrics (relative models).
        schedule: Learning-rate schedule; "one_cycle" (warm-up, then cosine decay) by default.
        **kwargs: Optimizer, the rest of the schedule and image logs (`tasks.common.module.TaskModule`).
    """

    monitor = "val/abs_rel"
    monitor_mode = "min"
    checkpoint_tag = "absrel"

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        pretrained: bool | str = False,
        output_stride: int = 32,
        backbone_kwargs: dict[str, Any] | None = None,
        head: str = "nnconv5",
        head_kwargs: dict[str, Any] | None = None,
        output: str = "metric",
        max_depth: float = 10.0,
        loss: str = "silog",
        loss_kwargs: dict[str, Any] | None = None,
        protocol: str = "none",
        eval_max_depth: float | None = None,
        median_scaling: bool = False,
        schedule: str = "one_cycle",
        **kwargs: Any,
    ) -> None:
        super().__init__(schedule=schedule, **kwargs)
        if (loss == "ssi") != (output == "inverse"):
            raise ValueError(
                f"loss '{loss}' does not fit output '{output}': the scale-and-shift-invariant loss ('ssi') "
                f"trains relative inverse depth (output='inverse'); the others train metric depth"
            )
        self.backbone = create_backbone(
            backbone, pretrained=pretrained, output_stride=output_stride, **(backbone_kwargs or {})
        )
        self.head = create_depth_head(
            head, self.backbone.feature_info, output=output, max_depth=max_depth, **(head_kwargs or {})
        )
        self.criterion = create_loss(loss, **(loss_kwargs or {}))
        cap = max_depth if eval_max_depth is None and protocol == "none" else eval_max_depth
        self.metrics = nn.ModuleDict(
            {stage: DepthMetrics(protocol, max_depth=cap, median_scaling=median_scaling) for stage in ("val", "test")}
        )

    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) normalized images -> (N, 1, H, W) depth (or inverse depth)."""
        return self.deployable()(images)

    def deployable(self) -> nn.Module:
        """Backbone + decoder (`DepthNetwork`, sharing this module's weights): images -> (N, 1, H, W)."""
        return DepthNetwork(self.backbone, self.head)

    def _loss(self, pred: Tensor, depth: Tensor) -> Tensor:
        with self.full_precision():  # float32 under mixed precision (logs of small depths)
            return self.criterion(pred.float(), depth.float(), valid_mask(depth, 0.0, self.hparams.max_depth))

    def to_depth(self, pred: Tensor, depth: Tensor | None = None) -> Tensor:
        """Metric depth from the network output.

        Metric outputs pass through. Inverse outputs are aligned to the ground truth's inverse depth by
        per-image least-squares scale and shift, then inverted (MiDaS's evaluation); without ground
        truth, 1 / output (relative depth).
        """
        if self.hparams.output == "metric":
            return pred
        if depth is None:
            return 1.0 / pred.clamp_min(1e-6)  # unaligned relative depth
        valid = valid_mask(depth, 0.0, self.hparams.max_depth)
        disparity = torch.where(valid, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
        s, t = scale_and_shift(pred.flatten(0, 1), disparity.flatten(0, 1), valid.flatten(0, 1))
        aligned = s.view(-1, 1, 1, 1) * pred + t.view(-1, 1, 1, 1)
        return 1.0 / aligned.clamp_min(1.0 / self.hparams.max_depth)

    def network_loss(self, outputs: Tensor, batch: dict) -> Tensor:
        """The masked loss of `deployable()`'s (N, 1, H, W) output against the batch's depth."""
        return self._loss(outputs, batch["depth"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Masked loss of one batch."""
        pred = self(batch["image"])  # (N, 1, H, W)
        loss = self.network_loss(pred, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred), sync_dist=True)
        return loss

    def evaluate_batch(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Loss and metric updates; the first batch is drawn as RGB | truth | prediction | error.

        Each image's errors go in with its dataset index, so under DDP the images the sampler repeats
        count once (`tasks.depth.metrics.DepthMetrics`).
        """
        pred = self(batch["image"]).float()
        depth = batch["depth"]
        keep, indices = self.evaluation_samples(stage, len(pred))
        # Weighted by valid pixels: a batch without one adds nothing to the epoch's mean (not a zero loss).
        pixels = int(valid_mask(depth[keep], 0.0, self.hparams.max_depth).sum())
        if pixels:
            self.add_eval_loss(stage, self._loss(pred[keep], depth[keep]), pixels)
        with self.full_precision():
            pred_depth = self.to_depth(pred, depth)
        kept = [i for i, k in zip(indices, keep.tolist()) if k]
        self.metrics[stage].update(pred_depth[keep], depth[keep], kept)
        if self.should_log_images(batch_idx):
            panel = depth_panels(batch["image"], depth, pred_depth, self.hparams.max_depth, self.hparams.log_images)
            self.log_image(f"{stage}/rgb_gt_pred_error", panel)

    def evaluate_epoch(self, stage: str) -> None:
        """Log the metrics (AbsRel, delta1 and RMSE in the progress bar) and print them."""
        metrics = self.metrics[stage]
        values = metrics.compute()  # gathers every process's rows
        metrics.reset()
        if torch.isnan(values["abs_rel"]):
            return  # no image with valid ground truth (on any process)
        for name, value in values.items():
            shown = any(name == key for key, _ in SHOWN)
            self.log_result(f"{stage}/{name}", value, prog_bar=shown)
        if self.reporting:
            summary = "  ".join(f"{label} {values[key]:.3f}" for key, label in SHOWN)
            self.print(f"{stage} epoch {self.current_epoch}: {summary}")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per image {"name", "depth": (H, W) metres at its file's size} (relative models: unaligned 1 / output).

        The network sees `image_size`; each map is resized back (bilinearly) to its photo's size and
        aspect, as displayed (EXIF orientation applied), so it overlays the photo.
        """
        depth = self.to_depth(self(batch["image"]))  # (N, 1, h, w)
        out = []
        for name, d, size in zip(batch["name"], depth, batch["size"]):
            if tuple(d.shape[-2:]) != tuple(size):
                d = nn.functional.interpolate(d[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
            out.append({"name": name, "depth": d[0]})  # (H, W)
        return out

    def prediction_writer(self) -> Callback:
        """16-bit and colour-mapped depth PNGs."""
        return DepthPredictionWriter()
