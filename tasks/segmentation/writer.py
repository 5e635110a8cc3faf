"""`predict` output: one colour-palette PNG of class indices per input image."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from tasks.segmentation.visualize import palette


class PaletteMaskWriter(BasePredictionWriter):
    """Writes `<output_dir>/<image stem>.png`: palette PNGs whose pixel values are the class indices.

    Each file is written to a temporary name and renamed, so an interrupted run leaves no half-written mask.

    Args:
        output_dir: Folder for the masks (created if needed).
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Sequence[tuple[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Save the batch's masks."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        colours = palette(pl_module.hparams.num_classes)[:256].flatten().tolist()
        for path, mask in prediction:
            image = Image.fromarray(mask.numpy(), mode="P")
            image.putpalette(colours)
            target = self.output_dir / f"{Path(path).stem}.png"
            fd, tmp = tempfile.mkstemp(suffix=".png", dir=self.output_dir)
            os.close(fd)
            try:
                image.save(tmp, format="PNG")
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
