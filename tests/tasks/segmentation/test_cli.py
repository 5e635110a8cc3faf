"""The segmentation command line beyond the shared commands (tests/tasks/test_skeleton.py)."""

import numpy as np

from tasks.segmentation.cli import main

SMALL = ["--data.synthetic_size", "48", "--data.crop_size", "[48, 48]", "--data.batch_size", "2"]


def test_fit_fast_dev_run_with_backbone_shortcut(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--backbone", "mobilenet_v2", "--trainer.fast_dev_run", "1", *SMALL])
    assert cli.model.backbone.name == "mobilenet_v2"
    assert cli.trainer.state.finished
    assert np.isfinite(cli.trainer.callback_metrics["val/mIoU"].item())
