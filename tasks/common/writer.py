"""The `predict` writer every task's writer builds on: one output folder convention, one file per image.

Predictions go to `--data.predict_output_dir` when it is set, else to `<log dir>/predictions/`: with the
default logger `runs/<task>/version_N/predictions/`, without a logger `<default_root_dir>/predictions/`.
A task's `predict_step` returns one dict per image with its "name" (the file stem); the writer hands
each to `write_item`, and `finish` runs once after the last batch (a task's summary file). Every file
is written atomically (`tasks.common.files`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


def prediction_folder(trainer: Trainer) -> Path:
    """Where `predict` writes (see the module docstring)."""
    hparams = getattr(getattr(trainer, "datamodule", None), "hparams", {})
    chosen = hparams.get("predict_output_dir") if hasattr(hparams, "get") else None
    if chosen:
        return Path(chosen)
    return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"


class TaskPredictionWriter(BasePredictionWriter):
    """Calls `write_item(folder, item, trainer, pl_module)` for every image of every predict batch."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")

    def write_item(self, folder: Path, item: dict, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the files of one image."""
        raise NotImplementedError

    def finish(self, folder: Path, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write what covers the whole run (nothing by default)."""

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Resolve and create the output folder once."""
        self.folder = prediction_folder(trainer)
        self.folder.mkdir(parents=True, exist_ok=True)

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
        """Write each image of the batch."""
        for item in prediction:
            self.write_item(self.folder, item, trainer, pl_module)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Run `finish` and say where the files are."""
        self.finish(self.folder, trainer, pl_module)
        pl_module.print(f"predictions written to {self.folder}")
