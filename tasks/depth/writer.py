"""`predict` output: a 16-bit depth PNG and a colour-mapped PNG per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from tasks.common.files import save_png_atomic
from tasks.common.writer import TaskPredictionWriter
from tasks.depth.visualize import depth_to_uint8_rgb


class DepthPredictionWriter(TaskPredictionWriter):
    """Writes `<name>_depth.png` (uint16, metres * depth_scale, 0 = invalid) and `<name>_color.png`.

    Both are at the photo's size (`DepthModule.predict_step` resizes the prediction back); the colour
    map spans the image's own depth range (`depth_to_uint8_rgb`).

    Args:
        depth_scale: Stored units per metre (1000: millimetres, as NYU and 7-Scenes store depth).
    """

    def __init__(self, depth_scale: float = 1000.0) -> None:
        super().__init__()
        self.depth_scale = float(depth_scale)

    def write_item(self, folder: Path, item: dict, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save one image's depth (item["depth"]: (H, W) metres)."""
        depth = np.nan_to_num(item["depth"].detach().float().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)
        raw = np.clip(np.round(depth * self.depth_scale), 0, 65535).astype(np.uint16)
        save_png_atomic(Image.fromarray(raw), folder / f"{item['name']}_depth.png")
        save_png_atomic(Image.fromarray(depth_to_uint8_rgb(depth)), folder / f"{item['name']}_color.png")
