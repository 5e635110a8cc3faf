"""`python -m tasks.segmentation fit|validate|test|predict`: the shared CLI and the default schedule."""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from tasks.common.cli import LiteDenseCLI, run_cli
from tasks.segmentation.datamodule import SegmentationDataModule
from tasks.segmentation.module import SegmentationModel
from tasks.segmentation.writer import PaletteMaskWriter


def trainer_defaults() -> dict:
    """The default schedule: a few minutes on 2 CPU cores, best checkpoint by val mIoU, TensorBoard logs.

    Built fresh on each call (callbacks are stateful). Callbacks given here are always present;
    Lightning adds them to whatever a config lists.
    """
    return {
        "max_epochs": 8,
        "log_every_n_steps": 5,
        "callbacks": [
            ModelCheckpoint(
                monitor="val/mIoU",
                mode="max",
                save_top_k=1,
                save_last=True,
                filename="best-epoch{epoch:02d}-miou{val/mIoU:.4f}",
                auto_insert_metric_name=False,
            ),
            LearningRateMonitor(logging_interval="step"),
            PaletteMaskWriter(),  # into data.predict_output_dir
        ],
    }


def main(args: list[str] | None = None) -> LiteDenseCLI:
    """Run the segmentation command line.

    Args:
        args: Arguments instead of sys.argv (tests).

    Returns:
        The CLI after it ran.
    """
    return run_cli(
        SegmentationModel, SegmentationDataModule, trainer_defaults=trainer_defaults(), args=args, task="segmentation"
    )
