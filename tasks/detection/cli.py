"""The detection command line: `python -m tasks.detection fit|validate|test|predict`.

The default callbacks (best checkpoint by val/mAP, learning-rate monitor, the `predict` writer) come
from `SSDLiteModule.configure_callbacks`, since LightningCLI does not instantiate callbacks given
as `trainer_defaults`; Lightning's default logger is TensorBoard.
"""

from __future__ import annotations

from tasks.common.cli import run_cli
from tasks.detection.datamodule import DetectionDataModule
from tasks.detection.module import SSDLiteModule

# Short CPU-friendly schedule: the synthetic set learns visibly in a few minutes.
TRAINER_DEFAULTS = {"max_epochs": 6, "log_every_n_steps": 5}


def main(args: list[str] | None = None):
    """Run `python -m tasks.detection ...`."""
    return run_cli(SSDLiteModule, DetectionDataModule, trainer_defaults=dict(TRAINER_DEFAULTS), args=args)
