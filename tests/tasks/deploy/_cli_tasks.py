"""The tiny per-task CLI settings the deploy tests fit, export and validate with (synthetic default data)."""

from __future__ import annotations

from tasks.depth.cli import main as depth_main
from tasks.detection.cli import main as detection_main
from tasks.segmentation.cli import main as segmentation_main

COMMON = ["--data.synthetic_train_size=2", "--data.synthetic_val_size=2", "--data.batch_size=2"]
# task -> (CLI main, its tiny settings, a validation metric, a predict file name or None)
TASKS = {
    "depth": (depth_main, ["--data.image_size=[32, 32]"], "val/abs_rel", "a_depth.png"),
    "segmentation": (segmentation_main, ["--data.synthetic_size=32", "--data.crop_size=[32, 32]"], "val/mIoU", None),
    "detection": (
        detection_main,
        ["--data.image_size=64", "--model.extra_channels=[16, 16, 8, 8]", "--model.score_thresh=0.0"],
        "val/mAP50",
        None,
    ),
}


def metrics(cli) -> dict[str, float]:
    """The metrics a `validate` / `test` CLI run logged."""
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def cli_args(name: str) -> list[str]:
    """Task `name`'s tiny settings without a logger: the arguments its export / validate runs share."""
    return [*COMMON, *TASKS[name][1], "--trainer.logger=false"]
