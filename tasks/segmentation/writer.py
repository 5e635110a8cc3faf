"""`predict` output: one colour-palette PNG of class indices per input image."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from tasks.common.files import save_png_atomic
from tasks.common.writer import TaskPredictionWriter
from tasks.segmentation.visualize import palette


class PaletteMaskWriter(TaskPredictionWriter):
    """Writes `<name>.png`: a palette PNG whose pixel values are the class indices, at the image's size."""

    def write_item(self, folder: Path, item: dict, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save one mask (item["mask"]: (H, W) uint8)."""
        image = Image.fromarray(item["mask"].cpu().numpy(), mode="P")
        image.putpalette(palette(pl_module.hparams.num_classes)[:256].flatten().tolist())
        save_png_atomic(image, folder / f"{item['name']}.png")
