"""Monocular depth: `python -m tasks.depth fit|validate|test|predict --backbone NAME`."""

from tasks.depth.datamodule import DepthDataModule
from tasks.depth.module import DepthModule

__all__ = ["DepthDataModule", "DepthModule", "main", "trainer_defaults"]


def trainer_defaults() -> dict:
    """The default schedule: minutes on 2 CPU cores, best checkpoint by AbsRel, TensorBoard logs.

    Callbacks given here are always present (Lightning adds them to whatever a config lists).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tasks.depth.writer import DepthPredictionWriter

    return {
        "max_epochs": 6,
        "log_every_n_steps": 10,
        "callbacks": [
            ModelCheckpoint(
                monitor="val/abs_rel",
                mode="min",
                save_top_k=1,
                save_last=True,
                filename="best-epoch{epoch:02d}-absrel{val/abs_rel:.4f}",
                auto_insert_metric_name=False,
            ),
            DepthPredictionWriter(output_dir="predictions/depth"),
        ],
    }


def main(args: list[str] | None = None):
    """Run the depth CLI (arguments from sys.argv unless given)."""
    from tasks.common.cli import run_cli

    return run_cli(DepthModule, DepthDataModule, trainer_defaults=trainer_defaults(), args=args, task="depth")
