"""`predict` output: one colour-palette PNG of class indices per input image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from tasks.common.files import save_png_atomic
from tasks.segmentation.visualize import palette


class PaletteMaskWriter(BasePredictionWriter):
    """Writes `<output_dir>/<image stem>.png`: palette PNGs whose pixel values are the class indices.

    Each file is written to a temporary name and renamed, so an interrupted run leaves no half-written mask.

    Args:
        output_dir: Folder for the masks (created if needed); None uses the data module's
            `predict_output_dir` (so `--data.predict_output_dir masks/` works from the command line).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = None if output_dir is None else Path(output_dir)

    def _folder(self, trainer: Trainer) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        datamodule = getattr(trainer, "datamodule", None)
        return Path(getattr(getattr(datamodule, "hparams", None), "predict_output_dir", None) or "predictions")

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
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        colours = palette(pl_module.hparams.num_classes)[:256].flatten().tolist()
        for path, mask in prediction:
            image = Image.fromarray(mask.numpy(), mode="P")
            image.putpalette(colours)
            target = folder / f"{Path(path).stem}.png"
            save_png_atomic(image, target)
