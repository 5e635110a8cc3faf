"""`predict` output: a colour-mapped PNG and a 16-bit depth PNG per image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from tasks.common.files import save_png_atomic
from tasks.depth.visualize import depth_to_uint8_rgb


class DepthPredictionWriter(BasePredictionWriter):
    """Write `<name>_depth.png` (uint16, metres * depth_scale, 0 = invalid) and `<name>_color.png`.

    Args:
        output_dir: Folder for the PNGs (created).
        depth_scale: Stored units per metre (1000: millimetres, as NYU and 7-Scenes store depth).
    """

    def __init__(self, output_dir: str = "predictions/depth", depth_scale: float = 1000.0) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.depth_scale = Path(output_dir), float(depth_scale)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Save each image's depth of a predict batch."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        depth = prediction["depth"].detach().float().cpu().numpy()  # (N, 1, H, W) metres
        for name, d in zip(prediction["name"], depth[:, 0]):
            d = np.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)
            raw = np.clip(np.round(d * self.depth_scale), 0, 65535).astype(np.uint16)
            save_png_atomic(Image.fromarray(raw), self.output_dir / f"{name}_depth.png")
            save_png_atomic(Image.fromarray(depth_to_uint8_rgb(d)), self.output_dir / f"{name}_color.png")
