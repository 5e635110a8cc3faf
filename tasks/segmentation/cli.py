"""`python -m tasks.segmentation fit|validate|test|predict`: the shared CLI with segmentation's schedule."""

from __future__ import annotations

from tasks.common.cli import LiteDenseCLI, run_cli
from tasks.segmentation.datamodule import SegmentationDataModule
from tasks.segmentation.module import SegmentationModule

# A few minutes on 2 CPU cores: 96 synthetic images at batch 8 (12 steps an epoch), eight epochs.
TRAINER_DEFAULTS = {"max_epochs": 8, "log_every_n_steps": 5}


def main(args: list[str] | None = None) -> LiteDenseCLI:
    """Run the segmentation command line (arguments from sys.argv unless given)."""
    return run_cli(SegmentationModule, SegmentationDataModule, TRAINER_DEFAULTS, args, task="segmentation")
