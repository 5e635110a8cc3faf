"""`python -m tasks.depth fit|validate|test|predict`: the shared CLI with depth's default schedule."""

from __future__ import annotations

from tasks.common.cli import LiteDenseCLI, run_cli
from tasks.depth.datamodule import DepthDataModule
from tasks.depth.module import DepthModule

# Minutes on 2 CPU cores: 160 synthetic scenes at batch 8 (20 steps an epoch), six epochs.
TRAINER_DEFAULTS = {"max_epochs": 6, "log_every_n_steps": 10}


def main(args: list[str] | None = None) -> LiteDenseCLI:
    """Run the depth command line (arguments from sys.argv unless given)."""
    return run_cli(DepthModule, DepthDataModule, TRAINER_DEFAULTS, args, task="depth")
